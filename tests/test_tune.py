"""`segzoo tune` (issue 24): an Optuna study over config keys, each trial an ordinary run in its own folder,
on a real SQLite storage (two processes sharing one study included)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segzoo.cli import main

pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "seed": 3,
    "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 4, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 64, "num_classes": 1},
             "train_size": 4, "valid_size": 2, "batch_size": 2},
    "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
    "callbacks": [{"name": "DiceCallback"}],
    "num_epochs": 1,
    "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}
SPACE = {"optimizer.params.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.params.num_channels": {"type": "categorical", "choices": [4, 8]}}


def _files(tmp_path: Path, space: dict | str = SPACE, **changes) -> tuple[Path, Path]:
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False).replace("LOGDIR", str(tmp_path / "study")))
    spc = tmp_path / "space.yml"
    spc.write_text(space if isinstance(space, str) else yaml.safe_dump(space, sort_keys=False))
    return cfg, spc


def _study(tmp_path: Path):
    import optuna

    return optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")


def _rows(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "study" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("space, named", [
    ({"optimizer.params.lr": {"type": "uniform", "low": 0.1, "high": 1}}, "optimizer.params.lr: unknown type 'uniform'"),
    ({"optimizer.params.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "optimizer.params.lr: empty range"),
    ({"optimizer.params.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log: true needs low > 0"),
    ({"model.params.num_channels": {"type": "categorical", "choices": []}}, "model.params.num_channels: choices"),
    ({"optimizer.params.lr": {"type": "float", "low": 0.1, "hi": 1}}, "type float takes no 'hi'"),
    ({"optimzer.params.lr": {"type": "float", "low": 0.001, "high": 0.01}}, "optimzer.params.lr=0.001: unknown "
                                                                             "config key optimzer"),
    ({"optimizer.params.lrr": {"type": "float", "low": 0.001, "high": 0.01}}, "unknown key optimizer.params.lrr: "
                                                                              "optimizer Adam takes no 'lrr'"),
    ({"model.params.num_chanels": {"type": "int", "low": 4, "high": 8}}, "takes no 'num_chanels'"),
    ({"data.batch_size": {"type": "int", "low": 0, "high": 4}}, "data.batch_size=0: data.batch_size must be >= 1"),
    ({"pruner": "median"}, "names no config key"),
    ({**SPACE, "pruner": {"name": "medain"}}, "pruner: unknown pruner 'medain'"),
])
def test_a_bad_space_file_is_one_line_naming_the_key_before_any_trial(tmp_path, capsys, space, named):
    cfg, spc = _files(tmp_path, space)
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "study").exists()  # no trial, no storage


def test_a_space_file_that_is_not_a_mapping_and_a_bad_pruner_argument(tmp_path, capsys):
    cfg, spc = _files(tmp_path, "- a\n- b\n")
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 2
    assert "must be a mapping" in capsys.readouterr().err
    cfg, spc = _files(tmp_path, {**SPACE, "pruner": {"name": "median", "n_warmup_step": 1}})
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "pruner median" in err and "n_warmup_step" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study" / "trial-0000").exists()


@pytest.mark.slow
def test_a_study_runs_trials_in_their_own_folders_and_continues_when_run_again(tmp_path, capsys):
    cfg, spc = _files(tmp_path)
    # a foreign file where trial 0 would train: that trial fails with its reason, the study goes on
    (tmp_path / "study" / "trial-0000").mkdir(parents=True)
    (tmp_path / "study" / "trial-0000" / "notes.txt").write_text("mine")
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "3"]) == 0
    assert (tmp_path / "study" / "trial-0000" / "notes.txt").read_text() == "mine"
    rows = _rows(tmp_path)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "FAIL"), ("1", "COMPLETE"), ("2", "COMPLETE")]
    assert "already holds a run" in rows[0]["reason"]
    for row in rows[1:]:
        assert Path(row["logdir"]) == tmp_path / "study" / f"trial-000{row['number']}"
        assert (Path(row["logdir"]) / "checkpoints" / "best.pth").is_file()
        assert "optimizer.params.lr=" in row["params"] and row["best"] != ""
        saved = yaml.safe_load((Path(row["logdir"]) / "config.yml").read_text())
        assert saved["logdir"] == row["logdir"]
    md = (tmp_path / "study" / "trials.md").read_text()
    assert "| number | state | best | params | logdir | reason |" in md and md.count("COMPLETE") == 2
    out = capsys.readouterr().out
    assert "trial 0: FAIL" in out and "number  state" in out
    for name in ("history.png", "importances.png"):
        assert (tmp_path / "study" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # run again: the study continues to 4 finished trials, its summary files are rewritten
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "4"]) == 0
    assert [r["state"] for r in _rows(tmp_path)] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "4"]) == 0
    assert "already has 4 finished trials" in capsys.readouterr().out
    assert len(_study(tmp_path).trials) == 4


@pytest.mark.slow
def test_the_pruner_stops_a_trial_after_the_epoch_it_reports(tmp_path):
    # dice is maximised; a threshold pruner with lower=2 prunes every trial at its first report
    space = {**SPACE, "pruner": {"name": "threshold", "lower": 2.0}}
    cfg, spc = _files(tmp_path, space, num_epochs=3, callbacks=[{"name": "DiceCallback"}, {"name": "CSVLogger"}])
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 0
    trial = _study(tmp_path).trials[0]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    with open(tmp_path / "study" / "trial-0000" / "metrics.csv", newline="") as f:
        assert {row["global_epoch"] for row in csv.DictReader(f)} == {"1"}  # the epoch was finished, no more
    assert _rows(tmp_path)[0]["state"] == "PRUNED" and _rows(tmp_path)[0]["best"] != ""
    # --pruner on the command line wins over the space file's
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "2", "--pruner", "none"]) == 0
    assert _study(tmp_path).trials[1].state.name == "COMPLETE"


def test_ctrl_c_marks_the_running_trial_and_exits_130(tmp_path, monkeypatch, capsys):
    import segzoo.training.config as config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "train_from_config", interrupted)
    cfg, spc = _files(tmp_path)
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "3"]) == 130
    trials = _study(tmp_path).trials
    assert len(trials) == 1 and trials[0].state.name == "FAIL"
    assert trials[0].user_attrs["reason"] == "interrupted (Ctrl-C)"
    assert _rows(tmp_path)[0]["reason"] == "interrupted (Ctrl-C)"
    assert "run the same command again" in capsys.readouterr().err


def test_a_foreign_summary_file_or_a_run_folder_is_refused_before_any_trial(tmp_path, capsys):
    cfg, spc = _files(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "trials.csv").write_text("my,own,table\n")
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 2
    assert "trials.csv exists and was not written by segzoo tune" in capsys.readouterr().err
    assert (tmp_path / "study" / "trials.csv").read_text() == "my,own,table\n"
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["trials.csv"]
    (tmp_path / "study" / "trials.csv").unlink()
    (tmp_path / "study" / "checkpoints").mkdir()
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 2
    assert "holds a training run" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_share_one_study_on_sqlite(tmp_path):
    cfg, spc = _files(tmp_path)
    (tmp_path / "study").mkdir()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "segzoo", "tune", "--config", str(cfg), "--space", str(spc), "--trials", "4",
           "--storage", storage, "--study", "shared"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    import optuna

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) >= 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # no trial ran twice: what each process ran (usually both run some; on a busy machine the first may
    # finish them all before the second starts one) adds up to the study, each in its own folder
    ran = [{int(line.split(":")[0].split()[1]) for line in o[0].splitlines() if "COMPLETE dice=" in line}
           for o in outs]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == {t.number for t in trials}
    folders = sorted(p.name for p in (tmp_path / "study").glob("trial-*"))
    assert folders == [f"trial-{n:04d}" for n in range(len(trials))]


def test_tune_help_imports_neither_torch_nor_the_engines():
    code = ("import json, sys\nfrom segzoo.cli import main\n"
            "try:\n    main(['tune', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'optuna', 'mlflow', 'wandb', 'numpy'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "--space" in proc.stdout and "--storage" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_readme_sweep_example_files_are_valid():
    from segzoo.tuning import check_space_keys, read_space

    space = read_space(ROOT / "configs" / "space.yml")
    assert [p.key for p in space.params] == ["optimizer.params.lr", "loss.name"] and space.pruner["name"] == "median"
    check_space_keys(space, ROOT / "configs" / "sweep.yml")


def test_a_key_an_override_cannot_carry_is_refused(tmp_path, capsys):
    cfg, spc = _files(tmp_path, {"optimizer.params.lr=1": {"type": "float", "low": 0.1, "high": 1}})
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]) == 2
    assert "a key must be a dotted config key" in capsys.readouterr().err


def test_storage_errors_hide_the_password_and_a_missing_space_file_is_named(tmp_path, capsys):
    cfg, spc = _files(tmp_path)
    args = ["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1"]
    assert main([*args, "--storage", "postgresql://user:s3cret@localhost:1/db"]) == 2
    err = capsys.readouterr().err
    assert "--storage" in err and "s3cret" not in err and "user:***@" in err
    assert main(["tune", "--config", str(cfg), "--space", str(tmp_path / "nope.yml"), "--trials", "1"]) == 2
    assert "space file not found" in capsys.readouterr().err


def test_a_logdir_holding_another_studys_trials_is_refused(tmp_path, capsys):
    from segzoo.tuning.report import MARKDOWN_HEADER

    cfg, spc = _files(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "trials.md").write_text(MARKDOWN_HEADER + "# study first\n")
    assert main(["tune", "--config", str(cfg), "--space", str(spc), "--trials", "1", "--study", "second"]) == 2
    assert "holds the trials of study 'first'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["trials.md"]
