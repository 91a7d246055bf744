"""`segzoo train` configs choosing an encoder by name: Segformer on a Mix Transformer, Unet on a timm model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import segzoo
from segzoo.cli import main
from segzoo.encoders import MixTransformerEncoder, TimmEncoder


def _config(tmp_path: Path, model: dict) -> Path:
    cfg = {
        "seed": 3,
        "logdir": str(tmp_path / "run"),
        "model": model,
        "data": {"kind": "procedural", "params": {"image_size": 64}, "train_size": 4, "valid_size": 2,
                 "batch_size": 2},
        "loss": {"name": "BCEDiceLoss"},
        "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
        "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}],
        "num_epochs": 1,
        "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


CASES = {
    "segformer_mit": ({"name": "segformer", "params": {"num_classes": 1, "encoder": "mit_b0"}}, MixTransformerEncoder),
    "unet_timm": ({"name": "unet", "params": {"num_classes": 1, "encoder": {"name": "timm",
                                                                            "params": {"name": "test_resnet"}}}},
                  TimmEncoder),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_config_trains_a_named_encoder_and_the_run_loads(tmp_path, capsys, case):
    model_cfg, encoder_cls = CASES[case]
    assert main(["train", "--config", str(_config(tmp_path, model_cfg))]) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yml").read_text())["model"] == model_cfg
    model = segzoo.load_model(run)
    assert isinstance(model.encoder, encoder_cls)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_config_with_an_unknown_encoder_is_one_line_and_creates_nothing(tmp_path, capsys):
    path = _config(tmp_path, {"name": "segformer", "params": {"num_classes": 1, "encoder": "mit_b7"}})
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown encoder 'mit_b7'" in err[0] and "mit_b" in err[0]
    assert not (tmp_path / "run").exists()
