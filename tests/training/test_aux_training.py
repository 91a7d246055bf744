"""Training a model with ``aux_params``: a loss on each output, labels from the procedural data, ``aux_loss``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from segzoo.checkpoint import load_checkpoint
from segzoo.cli import main
from segzoo.data import ProceduralSegmentation
from segzoo.training import SupervisedRunner
from segzoo.training.callbacks import CriterionCallback, LabelAccuracyCallback
from segzoo.training.callbacks.metrics import label_accuracy
from segzoo.training.state import RunnerState

AUX_CFG = {
    "seed": 3,
    "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 3, "num_channels": 8, "num_blocks": 2,
                                         "aux_params": {"classes": 2}}},
    "data": {"kind": "procedural", "params": {"image_size": 32, "num_classes": 3, "labels": True},
             "train_size": 8, "valid_size": 4, "batch_size": 4},
    "loss": {"name": "CrossEntropyLoss"},
    "aux_loss": {"name": "BCEWithLogitsLoss", "weight": 0.5},
    "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
    "callbacks": [{"name": "DiceCallback", "params": {"activation": "Softmax2d"}}],
    "num_epochs": 1,
    "runner": {"main_metric": "label_accuracy", "minimize_metric": False, "device": "cpu"},
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False).replace("LOGDIR", str(tmp_path / "run")))
    return path


def test_procedural_labels_say_which_classes_appear():
    data = ProceduralSegmentation(6, image_size=32, num_classes=4, labels=True)
    assert data.label_classes == 3
    for i in range(len(data)):
        item = data[i]
        want = torch.tensor([float((item["targets"] == k).any()) for k in (1, 2, 3)])
        assert item["label"].dtype == torch.float32 and torch.equal(item["label"], want)
    binary = ProceduralSegmentation(2, image_size=32, labels=True)[0]
    assert binary["label"].shape == (1,)
    assert "label" not in ProceduralSegmentation(2, image_size=32)[0]
    with pytest.raises(ValueError, match="labels must be true or false"):
        ProceduralSegmentation(2, labels="yes")


def _state(labels: torch.Tensor | None) -> RunnerState:
    state = RunnerState(stage="train", device=torch.device("cpu"))
    state.criterion = nn.CrossEntropyLoss()
    state.input = {"targets": torch.zeros(2, 8, 8, dtype=torch.long), "label": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    state.output = {"logits": torch.zeros(2, 3, 8, 8, requires_grad=True)}
    if labels is not None:
        state.output["label_logits"] = labels
    return state


def test_criterion_adds_the_weighted_aux_loss():
    labels = torch.tensor([[2.0, -1.0], [0.5, 0.3]], requires_grad=True)
    state = _state(labels)
    cb = CriterionCallback(aux_criterion=nn.BCEWithLogitsLoss(), aux_weight=0.4)
    cb.on_batch_end(state)
    mask = nn.CrossEntropyLoss()(state.output["logits"], state.input["targets"])
    aux = nn.BCEWithLogitsLoss()(labels, state.input["label"])
    assert torch.allclose(state.loss["loss"], mask + 0.4 * aux)
    assert state.batch_metrics["loss/aux"] == pytest.approx(float(aux))
    state.loss["loss"].backward()
    assert labels.grad is not None and labels.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="aux_params"):
        cb.on_batch_end(_state(None))
    with pytest.raises(ValueError, match="aux_weight"):
        CriterionCallback(aux_criterion=nn.BCEWithLogitsLoss(), aux_weight=float("nan"))


def test_runner_splits_the_pair_and_accuracy_reads_the_labels():
    from _models import tiny_model

    runner = SupervisedRunner(model=tiny_model("unet", num_classes=2, aux_params={"classes": 2}), device="cpu")
    out = runner.predict_batch(torch.rand(2, 3, 32, 32))
    assert out["logits"].shape == (2, 2, 32, 32) and out["label_logits"].shape == (2, 2)

    class DeepSupervision(nn.Module):  # a user's model returning a pair for its own criterion: kept whole
        def forward(self, x):
            return x[:, :2], x[:, 2:]

    pair = SupervisedRunner(model=DeepSupervision(), device="cpu").predict_batch(torch.rand(2, 3, 8, 8))
    assert list(pair) == ["logits"] and isinstance(pair["logits"], tuple)
    logits = torch.tensor([[3.0, -3.0], [-3.0, -3.0]])
    assert float(label_accuracy(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))) == 0.75
    assert float(label_accuracy(logits, torch.tensor([0, 1]))) == 0.5
    state = _state(logits)
    LabelAccuracyCallback().on_batch_end(state)
    assert state.batch_metrics["label_accuracy"] == 0.75


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["model"]["params"].pop("aux_params"), "model.params.aux_params"),
    (lambda c: c["data"]["params"].pop("labels"), "data.params.labels: true"),
    (lambda c: c["model"]["params"].update(aux_params={"classes": 5}), "aux_params.classes is 5"),
    (lambda c: c["aux_loss"].update(name="BCEWithLogitLoss"), "BCEWithLogitsLoss"),
    (lambda c: c["aux_loss"].update(wieght=1), "aux_loss.wieght; did you mean 'weight'"),
    (lambda c: c["aux_loss"].update(weight=float("nan")), "aux_loss.weight must be a finite number"),
])
def test_aux_loss_mistakes_are_one_line_before_training(tmp_path, capsys, change, needle):
    cfg = copy.deepcopy(AUX_CFG)
    change(cfg)
    assert main(["train", "--config", str(_write(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_config_with_aux_loss_logs_label_accuracy(tmp_path, capsys):
    assert main(["train", "--config", str(_write(tmp_path, AUX_CFG))]) == 0
    out = capsys.readouterr().out
    assert "label_accuracy" in out
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")
    assert "label_accuracy" in ckpt["valid_metrics"] and "loss/aux" in ckpt["valid_metrics"]
    assert ckpt["model_spec"]["kwargs"]["aux_params"] == {"classes": 2}
    assert "classification_head.3.weight" in ckpt["model_state_dict"]


def test_preflight_checks_the_mask_loss_of_an_aux_model():
    from _models import tiny_model

    from segzoo.errors import ConfigError
    from segzoo.training import preflight

    model = tiny_model("unet", num_classes=3, aux_params={"classes": 2})
    sample = {"features": torch.rand(3, 32, 32), "targets": torch.rand(1, 32, 32)}  # binary targets, 3 classes
    with pytest.raises(ConfigError, match="does not fit the model's output"):
        preflight.check_one_batch(model, nn.BCEWithLogitsLoss(), sample, "BCEWithLogitsLoss")
