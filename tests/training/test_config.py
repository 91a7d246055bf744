"""`segzoo train --config`: YAML loading, validation, overrides and a tiny end-to-end run."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segzoo.checkpoint import load_checkpoint
from segzoo.cli import main
from segzoo.errors import ConfigError
from segzoo.training.config import check_names, load_config

TINY = {
    "seed": 3,
    "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 8, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 32, "num_classes": 1},
             "train_size": 8, "valid_size": 4, "batch_size": 4},
    "loss": {"name": "BCEDiceLoss"},
    "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
    "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}},
                  {"name": "IouCallback", "params": {"threshold": 0.5}}],
    "num_epochs": 1,
    "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}


def write(tmp_path: Path, cfg: dict, name: str = "cfg.yml") -> Path:
    path = tmp_path / name
    text = yaml.safe_dump(cfg, sort_keys=False).replace("LOGDIR", str(tmp_path / "run"))
    path.write_text(text)
    return path


def test_tiny_config_end_to_end(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "best.pth").is_file()
    assert (run / "checkpoints" / "last.pth").is_file()
    saved = yaml.safe_load((run / "config.yml").read_text())
    assert saved["model"] == TINY["model"]
    ckpt = load_checkpoint(run / "checkpoints" / "best.pth")
    norm = ckpt.get("normalization")
    assert norm is not None and len(norm["mean"]) == 3 and len(norm["std"]) == 3
    out = capsys.readouterr().out
    assert "dice" in out


@pytest.mark.slow
def test_two_stages_with_override(tmp_path):
    cfg = dict(TINY, stages=[{"name": "warmup", "num_epochs": 1, "optimizer": {"params": {"lr": 0.0003}}},
                             {"name": "main", "num_epochs": 3}])
    cfg.pop("num_epochs")
    path = write(tmp_path, cfg)
    assert main(["train", "--config", str(path), "stages.1.num_epochs=1"]) == 0
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pth"))
    assert any(n.startswith("warmup.1") for n in names)
    assert any(n.startswith("main.1") for n in names)
    assert not any(n.startswith("main.2") for n in names)


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, TINY)
    cfg = load_config(path, ["optimizer.params.lr=3e-4", "data.batch_size=2", "runner.verbose=true",
                             "logdir=/tmp/elsewhere", "callbacks.0.params.threshold=0.25",
                             "scheduler={name: StepLR, params: {step_size: 1}}"])
    assert cfg["optimizer"]["params"]["lr"] == pytest.approx(3e-4)
    assert cfg["data"]["batch_size"] == 2
    assert cfg["runner"]["verbose"] is True
    assert cfg["logdir"] == "/tmp/elsewhere"
    assert cfg["callbacks"][0]["params"]["threshold"] == 0.25
    assert cfg["scheduler"] == {"name": "StepLR", "params": {"step_size": 1}}


def test_remove_key_override(tmp_path):
    cfg = load_config(write(tmp_path, TINY), ["~model.params.num_blocks", "~callbacks.0"])
    assert "num_blocks" not in cfg["model"]["params"]
    assert [c["name"] for c in cfg["callbacks"]] == ["IouCallback"]
    with pytest.raises(ConfigError, match="no model.params.depth to remove"):
        load_config(write(tmp_path, TINY), ["~model.params.depth"])


@pytest.mark.parametrize("override, message", [
    ("stages.0.num_epochs=2", "stages"),          # no stages list in TINY: a mapping is created, then rejected
    ("callbacks.9.name=X", "callbacks.9 does not exist"),
    ("callbacks.x.name=X", "callbacks.x does not exist"),
    ("callbacks.9=X", "no list item 9"),
    ("novalue", "key.sub=value"),
    ("runner.main_metric.x=1", "not a mapping"),
])
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TINY), override if isinstance(override, list) else [override])


@pytest.mark.parametrize("section, key, hint", [
    (None, "num_epoch", "num_epochs"),
    ("data", "batch_sise", "batch_size"),
    ("runner", "main_metrik", "main_metric"),
    ("model", "parms", "params"),
])
def test_unknown_key_names_closest(tmp_path, section, key, hint):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    (cfg if section is None else cfg[section])[key] = 1
    with pytest.raises(ConfigError, match=rf"{key}.*did you mean '{hint}'"):
        load_config(write(tmp_path, cfg))


def test_unknown_key_via_cli_is_one_line_exit_2(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path), "data.batch_sise=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=four", "data.batch_size must be int, got str"),
    ("runner.verbose=3", "runner.verbose must be bool"),
    ("num_epochs=true", "num_epochs must be int, got a bool"),
    ("model=[1, 2]", "model must be a mapping"),
    ("num_epochs=0", "num_epochs must be >= 1"),
    ("data.kind=csv", "data.kind must be 'procedural' or 'folder'"),
    ("data.kind=folder", "train_images"),
    ("data.image_size=64", "does not use data.image_size.*data.params.image_size"),
    ("stages=[{name: a, num_epochs: 1}]", "either num_epochs"),
    ("data.params.num_classes=3", "model.params.num_classes=1 but data.params.num_classes=3"),
    (["~num_epochs", "stages=[{name: ../../escape, num_epochs: 1}]"], "stages.0.name must be a plain file name"),
])
def test_bad_values(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TINY), override if isinstance(override, list) else [override])


def test_missing_required_section(tmp_path):
    cfg = {k: v for k, v in TINY.items() if k != "model"}
    with pytest.raises(ConfigError, match="model"):
        load_config(write(tmp_path, cfg))


@pytest.mark.parametrize("override, kind, hint", [
    ("model.name=resnet18_unett", "model", "resnet18_unet"),
    ("loss.name=BCEDiceLos", "loss", "BCEDiceLoss"),
    ("optimizer.name=Adamw", "optimizer", "AdamW"),
    ("scheduler={name: CosineAnealingLR}", "scheduler", "CosineAnnealingLR"),
    ("callbacks.0.name=DiceCalback", "callback", "DiceCallback"),
])
def test_unknown_names_rejected_before_work(tmp_path, override, kind, hint):
    cfg = load_config(write(tmp_path, TINY), [override])
    with pytest.raises(KeyError, match=rf"unknown {kind}.*{hint}"):
        check_names(cfg)


def test_unknown_loss_via_cli_leaves_no_logdir(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path), "loss.name=Nope"]) == 2
    assert "unknown loss 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torch_nn_loss_by_name(tmp_path):
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path), "loss.name=SmoothL1Loss"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.pth").is_file()


def test_bad_optimizer_params(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path), "optimizer.params={lr: 0.1, momentun: 0.9}",
                 "optimizer.name=SGD"]) == 2
    assert "momentun" in capsys.readouterr().err


def test_missing_config_file_exit_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yml" in err[0] and "not found" in err[0]


def test_invalid_yaml_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yml"
    path.write_text("model: {name: unet\nlogdir: [")
    assert main(["train", "--config", str(path)]) == 2
    assert "cannot parse" in capsys.readouterr().err


def test_demo_config_is_valid():
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yml"
    cfg = load_config(demo)
    check_names(cfg)
    assert cfg["model"]["params"]["pretrained"] is False
    assert torch.tensor(cfg["data"]["params"]["image_size"]) > 0


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHRINK = ["model.name=unet", "~model.params.pretrained", "model.params.num_channels=8", "model.params.num_blocks=2", "data.batch_size=4",
          "runner.verbose=false", "runner.device=cpu"]


@pytest.mark.parametrize("name", ["demo.yml", "multiclass.yml", "folder.yml"])
def test_example_configs_are_valid(name):
    cfg = load_config(CONFIGS / name)
    check_names(cfg)
    assert cfg["model"]["params"]["pretrained"] is False  # no downloads


@pytest.mark.slow
def test_multiclass_config_runs_tiny(tmp_path):
    args = ["train", "--config", str(CONFIGS / "multiclass.yml"), f"logdir={tmp_path / 'run'}", *SHRINK,
            "data.params.image_size=32", "data.train_size=8", "data.valid_size=4", "num_epochs=1",
            "callbacks.4.params.num_images=2"]
    assert main(args) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.pth").is_file()
    assert list((tmp_path / "run" / "predictions").glob("*.png"))


@pytest.mark.slow
def test_folder_config_runs_tiny(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {}
    for split, count in (("train", 6), ("valid", 3)):
        for part in ("images", "masks"):
            (tmp_path / split / part).mkdir(parents=True)
            paths[f"data.{split}_{part}"] = str(tmp_path / split / part)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / split / "images" / f"{i}.jpg")
            Image.fromarray((rng.integers(0, 2, (40, 36)) * 255).astype(np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    args = ["train", "--config", str(CONFIGS / "folder.yml"), f"logdir={tmp_path / 'run'}", *SHRINK,
            "data.image_size=32", "data.num_workers=0", "stages.0.num_epochs=1", "stages.1.num_epochs=1",
            *[f"{k}={v}" for k, v in paths.items()]]
    assert main(args) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.pth").is_file()


def test_colour_train_masks_are_refused_before_the_logdir_is_written(tmp_path, capsys):
    """The train set's first item is read before the run starts: train masks that are colour images (the images
    folder given twice) failed in a DataLoader worker after the logdir held a run, which then blocked the logdir."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {}
    for split in ("train", "valid"):
        for part in ("images", "masks"):
            (tmp_path / split / part).mkdir(parents=True)
            paths[f"data.{split}_{part}"] = str(tmp_path / split / part)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / split / "images" / f"{i}.png")
            Image.fromarray((rng.integers(0, 2, (40, 36)) * 255).astype(np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    paths["data.train_masks"] = paths["data.train_images"]
    args = ["train", "--config", str(CONFIGS / "folder.yml"), f"logdir={tmp_path / 'run'}", *SHRINK,
            "data.image_size=32", "data.num_workers=0", *[f"{k}={v}" for k, v in paths.items()]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a colour (RGB) image" in err, err
    assert not (tmp_path / "run").exists()


def test_folder_config_missing_folder_exit_2(tmp_path, capsys):
    args = ["train", "--config", str(CONFIGS / "folder.yml"), f"logdir={tmp_path / 'run'}",
            f"data.train_images={tmp_path / 'none'}"]
    assert main(args) == 2
    assert "none" in capsys.readouterr().err


# ---- hostile configs: each refused in one line before any folder is created ----------------------

def _refused(tmp_path, capsys, *overrides, config=None, needle=""):
    path = config or write(tmp_path, TINY)
    assert main(["train", "--config", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 1100, err
    assert needle in err, err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("overrides, needle", [
    (["loss.name=CrossEntropyLoss"], "CrossEntropyLoss needs num_classes >= 2"),
    (["loss={name: DiceLoss, params: {mode: multiclass}}"], "needs num_classes >= 2"),
    (["loss.name=BCEWithLogitsLoss", "data.params.num_classes=3", "model.params.num_classes=3"],
     "takes one binary channel"),
    (["data.params.num_classes=3", "~model.params.num_classes"], "model.params.num_classes is not set"),
    (["callbacks.0.params={activation: Softmax2d}"], "Softmax2d needs num_classes >= 2"),
    (["loss.params={bce_weight: .nan}"], "is nan on the first valid sample"),
    (["scheduler={name: StepLR, params: {step_size: abc}}"], "scheduler StepLR params.step_size must be int"),
    (["scheduler={name: OneCycleLR, params: {max_lr: 0.1, total_steps: 1}}"], "Tried to step"),
    (["callbacks.0.params.threshold=abc"], "threshold must be float | None, got str"),
    (["callbacks.0.params.threshold=5"], "threshold must be in [0, 1]"),
    (["runner.main_metric=f1"], "runner.main_metric 'f1' is computed by no callback"),
    (["callbacks.1={name: EarlyStoppingCallback, params: {patience: 2, metric: f1}}"], "EarlyStoppingCallback metric"),
    (["optimizer.params.lr=-1"], "optimizer Adam: Invalid learning rate: -1"),
    (["seed.x.y=1"], "seed is not a mapping"),
    (['logdir=""'], "logdir is empty"),
    (["data.train_size=10000000000"], "data.train_size must be <= 10000000"),
    (["data.num_workers=100000"], "data.num_workers must be <= 64"),
    (["data.params.image_size=100000"], "data.params.image_size must be <= 8192"),
    (["data.batch_size=4096", "data.params.image_size=512"], "GiB"),
    (["num_epochs=10000000"], "num_epochs must be <= 100000"),
    (["model.params.num_channels=100000"], "parameters (limit 2e+09)"),
    (["model.params.encoder_params={complexity: 1000000}"], "complexity must be an int in [0, 32]"),
    (["~num_epochs", "stages=[{name: a, num_epochs: 1}, {name: a, num_epochs: 1}]"], "two stages are named 'a'"),
    (["runner.resume=/nonexistent/run"], "resume checkpoint not found"),
])
def test_hostile_values_refused_before_training(tmp_path, capsys, overrides, needle):
    _refused(tmp_path, capsys, *overrides, needle=needle)


def test_logdir_inside_a_data_folder_refused(tmp_path, capsys):
    args = [f"data.train_images={tmp_path / 'd'}", f"logdir={tmp_path / 'd' / 'run'}"]
    assert main(["train", "--config", str(CONFIGS / "folder.yml"), *args]) == 2
    assert "inside data.train_images" in capsys.readouterr().err


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
                                                              for p, c in zip("abcdef", "bcdefg")])


def test_yaml_alias_bomb_is_one_short_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(BOMB + "\nlogdir: [*g, *g]\n")
    _refused(tmp_path, capsys, config=bomb, needle="alias bomb")
    _refused(tmp_path, capsys, "logdir=[" + ", ".join(["[x, x, x, x, x, x, x, x, x, x]"] * 3) + "]",
             needle="logdir must be str, got list")
    on_cli = "model.params=" + "{" + BOMB.replace("\n", ", ") + ", z: [*g, *g]}"
    _refused(tmp_path, capsys, on_cli, needle="alias bomb")


@pytest.mark.parametrize("content, needle", [
    (b"- 1\n- 2\n", "must be a mapping of keys"),
    (b"42\n", "must be a mapping of keys"),
    (b"\xff\xfe\x00\x01", "is not UTF-8"),
    (b"a: &a [*a]\n", "refers to its own anchor"),
    (b"x: " + b"[" * 500 + b"]" * 500 + b"\n", "nested"),
])
def test_bad_config_files_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "bad.yml"
    path.write_bytes(content)
    err = _refused(tmp_path, capsys, config=path, needle=needle)
    assert "bad.yml" in err


def test_config_path_is_a_folder(tmp_path, capsys):
    _refused(tmp_path, capsys, config=tmp_path, needle="is a folder")


@pytest.mark.slow
def test_nonfinite_loss_is_one_line_and_keeps_checkpoints(tmp_path, capsys, monkeypatch):
    from segzoo.losses import BCEDiceLoss

    calls = {"n": 0}
    real = BCEDiceLoss.forward

    def flaky(self, logits, targets):  # finite for the preflight and the first epoch, then NaN
        calls["n"] += 1
        loss = real(self, logits, targets)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(BCEDiceLoss, "forward", flaky)
    path = write(tmp_path, TINY)
    assert main(["train", "--config", str(path), "num_epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0], err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["epoch"] == 1
