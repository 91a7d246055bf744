"""The log-directory policy: a run never destroys another, resume never silently ignores a change."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import TinyNet, make_loaders

from segzoo.training import SupervisedRunner
from segzoo.training.logdir import CONFIG_HEADER, claim_logdir


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(logdir, lr=0.1, **kw):
    torch.manual_seed(0)
    model = TinyNet()
    return SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), lr),
                                    make_loaders(), logdir, num_epochs=kw.pop("num_epochs", 1), **kw)


def test_python_train_refuses_a_logdir_holding_a_run(tmp_path):
    run = tmp_path / "run"
    _train(run)
    before = _hashes(run)
    with pytest.raises(FileExistsError, match=r"already holds a run.*resume=.*overwrite_logdir=True"):
        _train(run, lr=0.5)
    assert _hashes(run) == before
    _train(run, resume=run, num_epochs=2)  # continuing the same run is allowed
    _train(run, lr=0.5, overwrite_logdir=True)  # so is replacing it on request
    assert "[train 1/1]" in (run / "log.txt").read_text() and "[train 2/2]" not in (run / "log.txt").read_text()


def test_overwrite_keeps_foreign_files_and_refuses(tmp_path):
    run = tmp_path / "run"
    _train(run)
    (run / "notes.txt").write_text("mine")
    before = _hashes(run)
    with pytest.raises(ValueError, match="notes.txt"):
        _train(run, overwrite_logdir=True)
    assert _hashes(run) == before


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_logdir_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="logdir must name a folder"):
        _train(bad)


def test_logdir_that_is_a_file_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _train(f)
    assert f.read_text() == "x"


def test_resume_with_changed_lr_is_refused(tmp_path):
    run = tmp_path / "run"
    _train(run, lr=0.1)
    before = _hashes(run)
    with pytest.raises(ValueError, match=r"changed optimizer: optimizer.groups\[0\].lr=0.5 \(the run used 0.1\)"):
        _train(run, lr=0.5, resume=run, num_epochs=2)
    assert _hashes(run) == before
    state = _train(run, lr=0.1, resume=run, num_epochs=2)
    assert state.global_epoch == 2


def test_second_claim_of_a_held_logdir_is_refused(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from segzoo.training.logdir import claim_logdir
        with claim_logdir({str(run)!r}):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FileExistsError, match="in use by another running training"):
            with claim_logdir(run):
                pass
    finally:
        proc.communicate("\n", timeout=60)
    with claim_logdir(run):  # released when the holder ended
        pass


# ---- the command line ------------------------------------------------------------------------

CFG = {
    "seed": 1, "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_channels": 4, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 32}, "train_size": 8, "valid_size": 4, "batch_size": 4},
    "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}],
    "num_epochs": 1, "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}


def _cli(*args, cwd=None):
    out = subprocess.run([sys.executable, "-m", "segzoo.cli", "train", *map(str, args)], capture_output=True,
                         text=True, cwd=cwd, timeout=600)
    return out.returncode, out.stderr


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def finished_run(tmp_path):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump(CFG).replace("LOGDIR", str(tmp_path / "run")))
    rc, err = _cli("--config", cfg)
    assert rc == 0, err
    return cfg, tmp_path / "run"


@pytest.mark.slow
def test_cli_rerun_into_a_finished_run(finished_run):
    cfg, run = finished_run
    assert (run / "config.yml").read_text().startswith(CONFIG_HEADER)
    before = _hashes(run)
    # another lr into the same logdir; the README's old rerun advice; a resume that changes the lr
    for args in (["--config", cfg, "optimizer={name: Adam, params: {lr: 0.5}}"], ["--config", run / "config.yml"]):
        _one_line_error(*_cli(*args), "already holds a run", "logdir=", "runner.resume=", "--force")
        assert _hashes(run) == before
    _one_line_error(*_cli("--config", cfg, f"runner.resume={run}", "optimizer={name: Adam, params: {lr: 0.5}}",
                          "num_epochs=2"), "optimizer.params.lr=0.5", "lr=0.001", "may change on resume")
    _one_line_error(*_cli("--config", run / "config.yml", "--force"), "input", "config.yml")
    assert _hashes(run) == before
    rc, err = _cli("--config", cfg, f"runner.resume={run}", "num_epochs=2")  # extending is allowed
    assert rc == 0, err
    assert _hashes(run)["config.yml"] == before["config.yml"]  # never rewritten on resume
    rc, err = _cli("--config", cfg, "--force")
    assert rc == 0, err
    assert "[train 2/2]" not in (run / "log.txt").read_text()


@pytest.mark.slow
def test_cli_logdir_dot_keeps_a_hand_written_config(tmp_path):
    (tmp_path / "config.yml").write_text(yaml.safe_dump(dict(CFG, logdir=".")))
    mine = (tmp_path / "config.yml").read_bytes()
    _one_line_error(*_cli("--config", "config.yml", cwd=tmp_path), "already holds a run")
    other = tmp_path / "other.yml"
    other.write_text(yaml.safe_dump(dict(CFG, logdir=".")))
    _one_line_error(*_cli("--config", other, "--force", cwd=tmp_path), "not written by segzoo train")
    _one_line_error(*_cli("--config", other, 'logdir=""', cwd=tmp_path), "logdir is empty")
    assert (tmp_path / "config.yml").read_bytes() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml", "other.yml"]


def test_resume_may_name_a_former_default_the_saved_run_used(tmp_path):
    """An UPerNet run saved before the per-level fusion default resumes with fuse=concat named, nothing else."""
    from segzoo.errors import ConfigError
    from segzoo.training.launch import check_resume_config

    saved = {"model": {"name": "resnet18_upernet", "params": {"num_classes": 1}}}
    def named(fuse):
        return {"model": {"name": "resnet18_upernet", "params": {"num_classes": 1, "decoder_params": {"fuse": fuse}}}}
    check_resume_config(saved, named("concat"), tmp_path / "config.yml")
    with pytest.raises(ConfigError, match="model.params.decoder_params.fuse='levels'"):
        check_resume_config(saved, named("levels"), tmp_path / "config.yml")
    with pytest.raises(ConfigError, match="run was trained with model.params.decoder_params.fuse='levels'"):
        check_resume_config(named("levels"), named("concat"), tmp_path / "config.yml")
