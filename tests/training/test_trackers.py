"""MLflowLogger and WandbLogger against the real engines (issue 24): a local MLflow store read back with
MlflowClient, W&B in offline mode read back from its run folder; resume continues the same tracker run."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml

from segzoo.cli import main
from segzoo.training.callbacks.trackers import MLflowLogger, WandbLogger, learning_rates, run_params
from segzoo.training.state import RunnerState

TINY = {
    "seed": 3,
    "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 4, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 64, "num_classes": 1},
             "train_size": 4, "valid_size": 2, "batch_size": 2},
    "optimizer": {"name": "Adam", "params": {"lr": 0.003}},
    "scheduler": {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}},
    "callbacks": [{"name": "DiceCallback"}, {"name": "CSVLogger"},
                  {"name": "PredictionSaverCallback", "params": {"num_images": 1}}],
    "num_epochs": 2,
    "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No tracker reaches the network or the user's folders: W&B offline and silent, no global MLflow store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written to "the current folder" would land in tmp_path


def _config(tmp_path: Path, tracker: dict, **changes) -> Path:
    cfg = {**TINY, "callbacks": [*TINY["callbacks"], tracker], **changes}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False).replace("LOGDIR", str(tmp_path / "run")))
    return path


def _mlflow_runs(logdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{logdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segzoo")
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_mlflow_logs_params_epoch_metrics_lr_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    cfg = _config(tmp_path, {"name": "MLflowLogger"})
    assert main(["train", "--config", str(cfg), "optimizer.params.lr=0.002"]) == 0
    run_dir = tmp_path / "run"
    client, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["optimizer.params.lr"] == "0.002"  # the effective config, overrides applied
    assert run.data.params["model.name"] == "unet"
    for key in ("train/loss", "valid/loss", "valid/dice", "train/dice"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs == pytest.approx([0.002, 0.001])  # the lr each epoch trained with (StepLR halves it)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "metrics.csv", "predictions"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pth"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "predictions")) == [
        "predictions/train.1.png", "predictions/train.2.png"]
    # the store and its artifacts are in the log directory, nothing in the current folder
    assert (run_dir / "mlflow.db").is_file() and (run_dir / "mlartifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yml", "run"]


@pytest.mark.slow
def test_mlflow_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    cfg = _config(tmp_path, {"name": "MLflowLogger"}, num_epochs=1)
    assert main(["train", "--config", str(cfg)]) == 0
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "num_epochs=2", f"runner.resume={run_dir}"]) == 0
    client, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "valid/dice")] == [1, 2]


def _wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``: LevelDB-log framing of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def _wandb_run(folder: Path) -> dict:
    import json

    import wandb

    wandb.teardown()  # W&B's service writes the run file in the background: end it, as the process exit does

    out = {"history": [], "config": {}, "files": set(), "run_id": None, "name": None}
    for rec in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["name"] = rec.run.run_id, rec.run.display_name
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "files":
            out["files"].update(f.path for f in rec.files.files)
    return out


@pytest.mark.slow
def test_wandb_offline_logs_config_metrics_and_files_and_resume_keeps_the_id(tmp_path):
    pytest.importorskip("wandb")
    cfg = _config(tmp_path, {"name": "WandbLogger", "params": {"project": "tests"}}, num_epochs=1)
    assert main(["train", "--config", str(cfg)]) == 0
    run_dir = tmp_path / "run"
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    first_folder = folders[0]
    first = _wandb_run(first_folder)
    assert first["name"] == "run"
    assert first["config"]["optimizer.params.lr"] == "0.003"
    epochs = [h for h in first["history"] if "valid/dice" in h]
    assert [h["epoch"] for h in epochs] == [1] and "lr" in epochs[0] and "train/loss" in epochs[0]
    assert {"checkpoints/best.pth", "metrics.csv", "predictions/train.1.png"} <= first["files"]
    assert (first_folder / "files" / "checkpoints" / "best.pth").is_file()

    assert main(["train", "--config", str(cfg), "num_epochs=2", f"runner.resume={run_dir}"]) == 0
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    second = _wandb_run(next(f for f in folders if f != first_folder))
    assert second["run_id"] == first["run_id"]  # `wandb sync` appends it to the same run
    assert [h["epoch"] for h in second["history"] if "valid/dice" in h] == [2]


def test_trackers_log_nothing_on_other_ranks(tmp_path):
    pytest.importorskip("mlflow")
    logger = MLflowLogger()
    state = RunnerState(logdir=tmp_path / "run", is_main_process=False)
    logger.on_stage_start(state)
    logger.on_epoch_start(state)
    logger.on_epoch_end(state)
    logger.on_stage_end(state)
    assert not (tmp_path / "run").exists() and logger.run_id is None and logger.state_dict() == {}


def test_the_run_id_is_the_callback_state(tmp_path):
    pytest.importorskip("wandb")
    logger = WandbLogger()
    logger.load_state_dict({"run_id": "abc123"})
    assert logger.state_dict() == {"run_id": "abc123"}


@pytest.mark.parametrize("cls, module, extra", [(MLflowLogger, "mlflow", "mlflow"), (WandbLogger, "wandb", "wandb")])
def test_a_missing_engine_names_the_extra(monkeypatch, cls, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import mlflow` raises ImportError
    with pytest.raises(ImportError, match=rf"segzoo\[{extra}\]"):
        cls()


def test_learning_rates_and_params_from_settings(tmp_path):
    model = torch.nn.Linear(2, 2)
    one = torch.optim.SGD(model.parameters(), lr=0.1)
    two = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.2}])
    assert learning_rates(one) == {"lr": 0.1}
    assert learning_rates(two) == {"lr/0": 0.1, "lr/1": 0.2}
    assert learning_rates({"a": one}) == {"lr/a": 0.1}
    assert learning_rates(None) == {}
    state = RunnerState(logdir=tmp_path, run_settings={"config": None, "train": {"seed": 1, "stages": [{"n": "x"}]}})
    assert run_params(state) == {"seed": "1", "stages.0.n": "x"}
