"""Encoders by name in the generic models, rebuildable specs of encoder instances (issue 21 follow-ups)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torchvision

import segzoo
from segzoo.checkpoint import save_checkpoint
from segzoo.checkpoint_format import model_checkpoint
from segzoo.encoders import (
    EncoderSpec,
    MixTransformerEncoder,
    ResnetEncoder,
    TimmEncoder,
    UnetEncoder,
    ViTEncoder,
)
from segzoo.errors import NotFoundError
from segzoo.models.registry import get_model_spec, model_from_spec

X = (2, 3, 64, 64)


# ---- 1. encoder= as a registered name or {"name", "params"} --------------------------------------------------

def test_encoder_by_registered_name():
    model = segzoo.Segformer(num_classes=2, encoder="mit_b0")
    assert isinstance(model.encoder, MixTransformerEncoder) and model.encoder.variant == "mit_b0"
    assert model(torch.rand(*X)).shape == (2, 2, 64, 64)
    assert get_model_spec(model) == {"name": "segformer", "kwargs": {"num_classes": 2, "encoder": "mit_b0"}}


def test_encoder_by_spec_dict_takes_the_models_in_channels():
    model = segzoo.Unet(num_classes=3, in_channels=4, encoder={"name": "timm", "params": {"name": "test_resnet"}})
    assert isinstance(model.encoder, TimmEncoder) and model.encoder.name == "test_resnet"
    assert model.in_channels == 4
    assert model(torch.rand(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    spec = get_model_spec(model)
    assert spec["kwargs"]["encoder"] == {"name": "timm", "params": {"name": "test_resnet"}}
    rebuilt = model_from_spec(spec)
    assert rebuilt.state_dict().keys() == model.state_dict().keys() and rebuilt.in_channels == 4


def test_encoder_name_with_encoder_params():
    model = segzoo.Unet(encoder="mit_b0", encoder_params={"drop_path_rate": 0.0})
    assert isinstance(model.encoder, MixTransformerEncoder)
    assert get_model_spec(model)["kwargs"] == {"encoder": "mit_b0", "encoder_params": {"drop_path_rate": 0.0}}


def test_dpt_encoder_dict_gives_a_vit():
    model = segzoo.DPT(num_classes=2, encoder={"name": "timm", "params": {"name": "test_vit"}})
    assert isinstance(model.encoder, ViTEncoder)
    assert model(torch.rand(*X)).shape == (2, 2, 64, 64)


def test_unknown_encoder_names_close_matches_in_one_line():
    with pytest.raises(KeyError) as info:
        segzoo.Segformer(encoder="mit_b9")
    message = str(info.value)
    assert isinstance(info.value, NotFoundError) and "\n" not in message
    assert "unknown encoder 'mit_b9'" in message and "'mit_b5'" in message


def test_a_timm_name_as_encoder_points_at_the_timm_encoder():
    with pytest.raises(KeyError, match=r"encoder=\{'name': 'timm', 'params': \{'name': 'resnet18'\}\}"):
        segzoo.Unet(encoder="resnet18")


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(encoder={"name": "timm", "param": {"name": "test_resnet"}}), ValueError, "'param'"),
    (dict(encoder={"params": {}}), ValueError, "takes the keys 'name'"),
    (dict(encoder={"name": "timm", "params": "test_resnet"}), TypeError, "encoder['params'] must be a dict"),
    (dict(encoder=3), TypeError, "registered encoder name"),
    (dict(encoder={"name": "timm"}), TypeError, "encoder 'timm' needs the argument(s) ['name']"),
    (dict(encoder={"name": "mit_b0"}, encoder_params={"drop_path_rate": 0.0}), ValueError, "not also in encoder_params"),
    (dict(encoder="mit_b0", encoder_params={"dropout": 0.1}), TypeError, "unknown argument(s) ['dropout']"),
    (dict(encoder="mit_b0", encoder_params={"variant": "mit_b2"}), ValueError, "fixes ['variant'] by its name"),
    (dict(encoder="mit_b0", num_channels=8), ValueError, "num_channels and num_blocks"),
    (dict(encoder={"name": "timm", "params": {"name": "test_resnet", "in_channels": 1}}, in_channels=4),
     ValueError, "in_channels=4"),
    (dict(encoder=TimmEncoder("test_resnet"), encoder_params={"name": "x"}), ValueError, "not both"),
])
def test_bad_encoder_arguments_are_one_line_errors(kwargs, error, fragment):
    with pytest.raises(error) as info:
        segzoo.Unet(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ---- 2. encoder instances record their arguments ---------------------------------------------------------------

def test_segzoo_encoders_record_plain_specs():
    assert TimmEncoder("test_resnet").encoder_spec == {"name": "timm", "params": {"name": "test_resnet"}}
    assert MixTransformerEncoder("mit_b1", drop_path_rate=0.0).encoder_spec == \
        {"name": "mit_b1", "params": {"drop_path_rate": 0.0}}
    assert UnetEncoder(3, 8, 2).encoder_spec == \
        {"name": "unet", "params": {"in_channels": 3, "num_channels": 8, "num_blocks": 2}}
    vit = TimmEncoder("test_vit", readout="cat")
    assert vit.encoder_spec["name"] == "timm_vit" and vit.encoder_spec["params"]["readout"] == "cat"
    timm_kwargs = TimmEncoder("test_resnet", out_indices=[1, 2], drop_path_rate=0.1).encoder_spec["params"]
    assert timm_kwargs == {"name": "test_resnet", "out_indices": [1, 2], "drop_path_rate": 0.1}


def test_weight_sources_are_not_recorded(tmp_path):
    """A ResNet's ImageNet default and a weights file are left out: the model's checkpoint holds the weights."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    spec = ResnetEncoder("resnet18", state_dict=str(path), requires_grad=None).encoder_spec
    # requires_grad=None meant "frozen, since weights were given": recorded as what it resolved to
    assert spec == {"name": "resnet", "params": {"arch": "resnet18", "requires_grad": False, "pretrained": False}}


def test_rebuild_never_fetches_pretrained_weights(monkeypatch):
    """A spec saying pretrained=True (a config's encoder dict) is rebuilt for a checkpoint with pretrained=False."""
    seen = []
    create = TimmEncoder._create

    def spy(name, kwargs, dynamic, where):
        seen.append(kwargs["pretrained"])
        return create(name, {**kwargs, "pretrained": False}, dynamic, where)

    monkeypatch.setattr(TimmEncoder, "_create", staticmethod(spy))
    spec = {"name": "unet", "kwargs": {"encoder": {"name": "timm", "params": {"name": "test_resnet",
                                                                              "pretrained": True}}}}
    model_from_spec(spec)
    assert seen == [False]
    spec = {"name": "unet", "kwargs": {"encoder": "timm", "encoder_params": {"name": "test_resnet",
                                                                           "pretrained": True}}}
    model_from_spec(spec)
    assert seen == [False, False]


class TinyEncoder(EncoderSpec):
    """A user's encoder: records nothing, as before."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    @property
    def out_channels(self):
        return [8]

    @property
    def out_strides(self):
        return [2]

    def forward(self, x):
        return [self.a(x)]


class MyTimm(TimmEncoder):
    """A user's subclass of a segzoo encoder: its instances are not TimmEncoder's to describe."""


def test_user_encoders_record_nothing():
    assert TinyEncoder().encoder_spec is None
    assert MyTimm("test_resnet").encoder_spec is None
    assert get_model_spec(segzoo.PSPnet(encoder=TinyEncoder())) is None
    assert get_model_spec(segzoo.Unet(encoder=MyTimm("test_resnet"))) is None


def test_an_encoder_changed_after_construction_records_no_model_spec():
    encoder = TimmEncoder("test_resnet")
    stem = encoder.model.conv1[0]  # test_resnet's deep stem; a 5x5 conv replaces its first 3x3
    encoder.model.conv1[0] = nn.Conv2d(stem.in_channels, stem.out_channels, 5, stem.stride, 2, bias=False)
    assert get_model_spec(segzoo.Unet(encoder=encoder)) is None


def _save_run(model: nn.Module, logdir):
    """One SGD step, then the trainer's light checkpoint (checkpoint_format.model_checkpoint) as best.pth."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.rand(2, model.in_channels, 64, 64)).mean().backward()
    opt.step()
    state = SimpleNamespace(model=model.eval(), stage="train", stage_index=0, epoch=1, global_epoch=1,
                            valid_metrics={"loss": 0.5}, epoch_metrics={}, main_metric="loss", minimize_metric=True,
                            best_valid_metric=0.5, best_name="train.1", stop_training=False, checkpoint_data={})
    return save_checkpoint(model_checkpoint(state), logdir / "checkpoints" / "best.pth")


INSTANCE_MODELS = {
    "unet_timm": lambda: segzoo.Unet(num_classes=2, encoder=TimmEncoder("test_resnet")),
    "segformer_mit": lambda: segzoo.Segformer(num_classes=2, encoder=MixTransformerEncoder("mit_b0")),
    "dpt_vit": lambda: segzoo.DPT(num_classes=2, encoder=TimmEncoder("test_vit")),
    "deeplab_dilated": lambda: segzoo.DeepLabV3Plus(num_classes=2, encoder=TimmEncoder("test_resnet", in_channels=1),
                                                    encoder_output_stride=16),
}


@pytest.mark.parametrize("name", INSTANCE_MODELS)
def test_checkpoint_of_an_encoder_instance_loads_without_a_factory(tmp_path, name):
    torch.manual_seed(0)
    model = INSTANCE_MODELS[name]()
    path = _save_run(model, tmp_path / "run")
    torch.manual_seed(1)  # another initialisation: equal outputs come from the checkpoint's weights
    loaded = segzoo.load_model(tmp_path / "run")
    assert type(loaded) is type(model) and type(loaded.encoder) is type(model.encoder)
    x = torch.rand(2, model.in_channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert segzoo.load_model(path).state_dict().keys() == model.state_dict().keys()


def test_weights_file_of_the_encoder_is_not_read_at_rebuild(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = segzoo.Unet(num_classes=2, encoder=ResnetEncoder("resnet18", state_dict=str(weights)))
    _save_run(model, tmp_path / "run")
    weights.unlink()  # the rebuild must not need it: the checkpoint holds every weight
    loaded = segzoo.load_model(tmp_path / "run")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_an_old_scripts_factory_still_rebuilds_a_run_that_now_has_a_spec(tmp_path):
    """A factory taking no ``encoder=`` (written when such checkpoints had no spec) gets the arguments it takes."""
    model = segzoo.Unet(num_classes=2, encoder=TimmEncoder("test_resnet"))
    _save_run(model, tmp_path / "run")

    def build(num_classes=1):
        return segzoo.Unet(num_classes=num_classes, encoder=TimmEncoder("test_resnet"))

    for factory in (build, lambda: build(2)):
        loaded = segzoo.load_model(tmp_path / "run", model_factory=factory)
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
        assert get_model_spec(loaded) == get_model_spec(model)


def test_a_timm_checkpoint_path_is_not_recorded(tmp_path):
    import timm

    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", features_only=True).state_dict(), path)
    assert TimmEncoder("test_resnet", checkpoint_path=str(path)).encoder_spec == \
        {"name": "timm", "params": {"name": "test_resnet"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet_timm", "segformer_mit", "dpt_vit"])
def test_segzoo_export_of_an_encoder_instance_run(tmp_path, capsys, name):
    from segzoo.cli import main

    torch.manual_seed(0)
    model = INSTANCE_MODELS[name]()
    _save_run(model, tmp_path / "run")
    out = tmp_path / "model.pt"
    code = main(["export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(out),
                 "--input-size", "64", "64"])
    assert code == 0, capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
        traced = torch.jit.load(str(out))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)


# ---- 4. small fixes ----------------------------------------------------------------------------------------------

def test_psp_reads_one_feature_map_of_a_plain_vit():
    model = segzoo.PSPnet(num_classes=2, encoder=TimmEncoder("test_vit"))
    assert model(torch.rand(*X)).shape == (2, 2, 64, 64)


def test_dpt_still_refuses_a_pyramid():
    with pytest.raises(ValueError, match="needs a plain ViT"):
        segzoo.DPT(encoder=TimmEncoder("test_resnet"))


def test_channels_last_setter_takes_auto():
    model = segzoo.Unet(num_classes=2, num_channels=8, num_blocks=2, channels_last=True)
    model.channels_last = "auto"
    assert model.layout_choice == segzoo.Unet(num_channels=8, num_blocks=2).layout_choice
    model.channels_last = False
    assert model.channels_last is False and model.layout_choice.source == "argument"


@pytest.mark.parametrize("value", ["false", "on", 1, None])
def test_channels_last_setter_refuses_other_values(value):
    model = segzoo.Unet(num_classes=2, num_channels=8, num_blocks=2, channels_last=False)
    with pytest.raises(ValueError, match="channels_last must be True, False or 'auto'"):
        model.channels_last = value
    assert model.channels_last is False
