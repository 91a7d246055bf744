"""What a config names resolves one way (segzoo.registry.Registry), and num_classes is stated once."""

import pytest
import torch
import yaml

from segzoo.cli import main
from segzoo.errors import ConfigError, NotFoundError
from segzoo.registry import Registry
from segzoo.training.build import build_named, registries
from segzoo.training.config import check_names, load_config

BASE = {
    "seed": 3,
    "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 3, "num_channels": 4, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 32}, "train_size": 4, "valid_size": 4, "batch_size": 4},
    "loss": {"name": "DiceLoss", "params": {"mode": "multiclass"}},
    "callbacks": [{"name": "DiceCallback", "params": {"activation": "Softmax2d"}}],
    "num_epochs": 1,
    "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}


def write(tmp_path, cfg, name="cfg.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False).replace("LOGDIR", str(tmp_path / "run")))
    return path


# ---- one registry mechanism --------------------------------------------------------------------------


def test_every_config_kind_is_a_registry():
    from segzoo.losses import LOSSES
    from segzoo.models.registry import MODELS
    from segzoo.training import CALLBACKS

    regs = registries()
    assert set(regs) == {"model", "loss", "optimizer", "scheduler", "callback"}
    assert all(isinstance(r, Registry) and r.kind == kind for kind, r in regs.items())
    assert regs["model"] is MODELS and regs["callback"] is CALLBACKS
    assert regs["loss"]["BCEDiceLoss"] is LOSSES["BCEDiceLoss"] and regs["loss"]["MSELoss"] is torch.nn.MSELoss
    assert regs["optimizer"]["AdamW"] is torch.optim.AdamW and "Optimizer" not in regs["optimizer"]
    assert regs["scheduler"]["ReduceLROnPlateau"] is torch.optim.lr_scheduler.ReduceLROnPlateau
    opt = regs["optimizer"].create("SGD", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(opt, torch.optim.SGD)


@pytest.mark.parametrize("kind, name, hint", [("optimizer", "Adamw", "AdamW"), ("scheduler", "StepLr", "StepLR"),
                                              ("loss", "MSELos", "MSELoss"), ("callback", "DiceCalback", "DiceCallback")])
def test_unknown_name_is_one_line_with_close_matches(kind, name, hint):
    with pytest.raises(NotFoundError) as info:
        build_named({"name": name}, registries()[kind], kind)
    msg = str(info.value.args[0])
    assert "\n" not in msg and msg.startswith(f"unknown {kind} {name!r}; did you mean") and repr(hint) in msg


def test_register_classes_scans_a_module_once():
    reg = Registry("optimizer")
    reg.register("SGD", lambda *a, **k: "mine")
    added = reg.register_classes(torch.optim, torch.optim.Optimizer)
    assert "Adam" in added and "SGD" not in added and reg.create("SGD") == "mine"  # a registered name keeps its factory
    assert reg.register_classes(torch.optim, torch.optim.Optimizer) == []
    other = Registry("optimizer")
    other.include(reg)
    assert list(other) == list(reg)
    with pytest.raises(ValueError, match="already registered"):
        other.include(reg)


def test_a_loss_registered_later_is_found_by_configs(tmp_path):
    from segzoo.losses import LOSSES, register_loss

    class LaterLoss(torch.nn.Module):
        def forward(self, logits, targets):
            return logits.mean()

    name = "LaterLossForConfigTest"
    if name not in LOSSES:
        register_loss(name, LaterLoss)
    cfg = load_config(write(tmp_path, BASE), [f"loss.name={name}", "~loss.params"])
    check_names(cfg)
    assert isinstance(build_named(cfg["loss"], registries()["loss"], "loss"), LaterLoss)


# ---- num_classes stated once ---------------------------------------------------------------------------


def test_data_takes_num_classes_from_the_model(tmp_path):
    from segzoo.training.build import build_loaders, num_classes

    cfg = load_config(write(tmp_path, BASE))
    assert cfg["data"]["params"]["num_classes"] == 3 and num_classes(cfg) == 3
    loaders, _ = build_loaders(cfg["data"], 0)
    targets = loaders["valid"].dataset[0]["targets"]
    assert targets.dim() == 2 and int(targets.max()) <= 2  # (H, W) class indices of 3 classes
    assert loaders["valid"].dataset.num_classes == 3


def test_old_config_repeating_num_classes_still_loads(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["data.params.num_classes=3"])
    assert cfg["data"]["params"]["num_classes"] == cfg["model"]["params"]["num_classes"] == 3


def test_different_num_classes_is_one_line_exit_2(tmp_path, capsys):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"model.params.num_classes=3 but data.params.num_classes=2"):
        load_config(path, ["data.params.num_classes=2"])
    assert main(["train", "--config", str(path), "data.params.num_classes=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.params.num_classes=3" in err and "data.params.num_classes=2" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["demo.yml", "folder.yml", "multiclass.yml"])
def test_shipped_configs_state_num_classes_once(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / name
    raw = yaml.safe_load(path.read_text())
    assert "num_classes" in raw["model"]["params"] and "num_classes" not in (raw["data"].get("params") or {})
    cfg = load_config(path)
    assert cfg["data"]["params"]["num_classes"] == raw["model"]["params"]["num_classes"]
