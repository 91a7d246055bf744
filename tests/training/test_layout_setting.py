"""One layout setting: the runner's channels_last ("auto" | True | False) sets a segzoo model's own layout."""

import pytest
import torch
from _helpers import TinyNet, make_loaders, train
from _models import tiny_model

from segzoo import hardware
from segzoo.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def avx2(tmp_path, monkeypatch):
    """The AVX2 rule (channels_last forward, NCHW train step): the two passes differ; no user cache."""
    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "cpu_capability", lambda: "AVX2")
    hardware._cpu_choice.cache_clear()
    yield
    hardware._cpu_choice.cache_clear()


def is_cl(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _model(**kwargs):
    return tiny_model("unet", num_classes=1, **kwargs)


def _loaders():
    return make_loaders(n_train=4, n_valid=4, size=16, batch_size=2)


def test_runner_true_sets_the_models_layout_which_keeps_applying(tmp_path):
    model = _model()  # "auto": NCHW for training on AVX2
    state = train(model, _loaders(), tmp_path / "run", channels_last=True)
    for mode in (True, False, True):
        model.train(mode)
        assert model.channels_last is True and is_cl(model._probe_weight())
    assert model.layout_choice.source == "runner channels_last=True"
    assert state.channels_last is False  # the model converts its inputs itself: the runner does not
    x = torch.rand(2, 3, 16, 16)
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(is_cl(args[0])))
    model.train()
    model(x)
    hook.remove()
    assert seen == [True]


def test_runner_false_sets_nchw_in_both_passes(tmp_path):
    model = _model()
    train(model, _loaders(), tmp_path / "run", channels_last=False)
    for mode in (False, True):
        model.train(mode)
        assert model.channels_last is False and not is_cl(model._probe_weight())


def test_runner_auto_is_passed_through(tmp_path):
    model = _model(channels_last=False)  # the model was built for NCHW; the runner asks for the machine's choice
    train(model, _loaders(), tmp_path / "run", channels_last="auto")
    assert model.layout_choice == hardware.LayoutChoice(True, False, "runner channels_last='auto'")
    model.train()
    assert model.channels_last is False and not is_cl(model._probe_weight())
    model.eval()
    assert model.channels_last is True and is_cl(model._probe_weight())  # the weights follow the mode again


def test_unset_leaves_the_models_choice_and_the_layout_is_recorded(tmp_path):
    model = _model(channels_last=True)
    state = train(model, _loaders(), tmp_path / "run")
    assert model.layout_choice.source == "argument" and model.channels_last is True
    assert state.checkpoint_data["layout"] == {"forward": True, "train": True, "source": "argument"}
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert ck["layout"] == {"forward": True, "train": True, "source": "argument"}
    auto = _model()
    state = train(auto, _loaders(), tmp_path / "auto", channels_last="auto")
    assert state.checkpoint_data["layout"] == {"forward": True, "train": False, "source": "runner channels_last='auto'"}


def test_a_plain_module_is_converted_as_before(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    state = train(net, _loaders(), tmp_path / "run", channels_last=True)
    assert state.channels_last is True and is_cl(net.net[0].weight)
    assert state.checkpoint_data["layout"]["source"] == "runner channels_last=True"
    other = TinyNet()
    state = train(other, _loaders(), tmp_path / "auto", channels_last="auto")  # AVX2: NCHW train step
    assert state.channels_last is False and not is_cl(other.net[0].weight)
    state = train(TinyNet(), _loaders(), tmp_path / "unset")
    assert state.channels_last is False and state.checkpoint_data["layout"]["source"] == "model's own"


@pytest.mark.parametrize("value", ["yes", 1, "AUTO", 0.0])
def test_other_values_are_refused_in_one_line(tmp_path, value):
    from segzoo.training.layout import check_layout_setting

    with pytest.raises(ValueError, match="channels_last must be True, False, 'auto' or None") as info:
        train(_model(), _loaders(), tmp_path / "run", channels_last=value)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
    check_layout_setting("auto")
    check_layout_setting(None)


def test_config_channels_last_auto_true_false(tmp_path):
    import yaml

    from segzoo.errors import ConfigError
    from segzoo.training.config import load_config

    cfg = {"logdir": str(tmp_path / "run"), "model": {"name": "unet", "params": {"num_classes": 1}},
           "data": {"kind": "procedural"}, "runner": {"channels_last": "auto"}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path)["runner"]["channels_last"] == "auto"
    assert load_config(path, ["runner.channels_last=true"])["runner"]["channels_last"] is True
    with pytest.raises(ConfigError, match="runner.channels_last must be true, false or auto, got 'fast'"):
        load_config(path, ["runner.channels_last=fast"])
