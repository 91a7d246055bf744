"""The log-directory policy: a run never destroys another, resume never silently ignores a change."""

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import TinyNet, make_loaders

from segzoo.training import Stage, SupervisedRunner
from segzoo.training.logdir import CONFIG_HEADER, LogdirMovedWarning, check_logdir_free, claim_logdir


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(logdir, lr=0.1, **kw):
    kw.setdefault("normalization", {"mean": [0.5] * 3, "std": [0.5] * 3})  # no "ImageNet's assumed" warning
    torch.manual_seed(0)
    model = TinyNet()
    return SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), lr),
                                    make_loaders(), logdir, num_epochs=kw.pop("num_epochs", 1), **kw)


def test_python_train_into_a_finished_run_moves_it_aside_and_cli_still_refuses(tmp_path):
    """Point 16: a Catalyst script trains several models into one logdir; no finished run is lost."""
    run = tmp_path / "run"
    _train(run)
    first = _hashes(run)
    with pytest.warns(LogdirMovedWarning) as seen:
        _train(run, lr=0.5)
    assert len(seen) == 1 and seen[0].filename == __file__  # shown at the user's train() line
    message = str(seen[0].message)
    assert "\n" not in message and str(tmp_path / "run.1") in message and "overwrite_logdir=True" in message
    assert _hashes(tmp_path / "run.1") == first  # the finished run, moved whole
    assert set(_hashes(run)) == set(first)  # a fresh run of its own in run/
    _train(run, lr=0.5, resume=run, num_epochs=2)  # continuing the same run is allowed
    _train(run, lr=0.5, overwrite_logdir=True)  # so is replacing it on request
    assert "[train 1/1]" in (run / "log.txt").read_text() and "[train 2/2]" not in (run / "log.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.1"]
    with pytest.raises(FileExistsError, match=r"already holds a run.*--force"):  # the CLI keeps its refusal
        check_logdir_free(run, caller="cli")


def test_three_models_into_one_logdir_then_predict_reads_the_last(tmp_path):
    """The z_segmentation notebook: three models one after another into one logdir, then a prediction."""
    from segzoo import create_model
    from segzoo.loading import load_model

    run = tmp_path / "logs"
    (tmp_path / "logs.2").write_text("someone's file")  # a taken name is skipped, never overwritten
    trained = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = create_model("unet", num_classes=1, num_channels=4, num_blocks=2)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1),
                                     make_loaders(size=16), run, num_epochs=1)
        assert len([w for w in seen if issubclass(w.category, LogdirMovedWarning)]) == min(seed, 1)
        trained.append({k: v.clone() for k, v in model.state_dict().items()})
    assert (tmp_path / "logs.2").read_text() == "someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "logs.1", "logs.2", "logs.3"]
    for folder, weights in (("logs.1", trained[0]), ("logs.3", trained[1]), ("logs", trained[2])):
        loaded = load_model(tmp_path / folder).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items()), folder


def test_a_run_with_foreign_files_or_holding_the_cwd_is_not_moved_aside(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _train(run)
    (run / "notes.txt").write_text("mine")
    before = _hashes(run)
    with pytest.raises(FileExistsError, match=r"holds 'notes.txt', not written by segzoo"):
        _train(run, lr=0.5)
    (run / "notes.txt").unlink()
    monkeypatch.chdir(run / "checkpoints")  # moving it would move the current folder, and relative paths with it
    with pytest.raises(FileExistsError, match="current folder"):
        _train("..", lr=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert _hashes(run) == {k: v for k, v in before.items() if k != "notes.txt"}


def test_a_logdir_that_is_a_symbolic_link_keeps_pointing_to_the_new_run(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    _train(tmp_path / "link")
    first = _hashes(tmp_path / "real")
    with pytest.warns(LogdirMovedWarning, match="real.1"):
        _train(tmp_path / "link", lr=0.5)
    assert _hashes(tmp_path / "real.1") == first and (tmp_path / "link").resolve() == tmp_path / "real"
    assert set(_hashes(tmp_path / "link")) == set(first)


def test_a_run_being_written_is_not_moved_aside_and_a_claimed_sibling_is_skipped(tmp_path):
    run = tmp_path / "run"
    _train(run)
    before = _hashes(run)
    code = textwrap.dedent("""
        import sys
        from segzoo.training.logdir import claim_logdir
        with claim_logdir(sys.argv[1], resume=sys.argv[1]):  # as a resumed run does
            print("held", flush=True)
            sys.stdin.readline()
    """)
    for held in (run, tmp_path / "run.1"):  # the run itself (still training), then an empty run.1 a run just claimed
        proc = subprocess.Popen([sys.executable, "-c", code, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip() == "held"
            if held == run:
                with pytest.raises(FileExistsError, match="in use by another running training"):
                    _train(run, lr=0.5)
                assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and _hashes(run) == before
            else:
                with pytest.warns(LogdirMovedWarning, match="run.2"):
                    _train(run, lr=0.5)
                assert list((tmp_path / "run.1").iterdir()) == []  # the other process's folder, left alone
                assert _hashes(tmp_path / "run.2") == before
        finally:
            proc.communicate("\n", timeout=60)


def test_overwrite_keeps_foreign_files_and_refuses(tmp_path):
    run = tmp_path / "run"
    _train(run)
    (run / "notes.txt").write_text("mine")
    before = _hashes(run)
    with pytest.raises(ValueError, match="notes.txt"):
        _train(run, overwrite_logdir=True)
    assert _hashes(run) == before


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A run holding every kind of file segzoo writes in a log directory (plus leftover temporary files)."""
    from segzoo.training.callbacks import CSVLogger, PredictionSaverCallback, TensorboardLogger

    run = tmp_path_factory.mktemp("full") / "run"
    torch.manual_seed(0)
    model = TinyNet()
    runner = SupervisedRunner()
    runner.train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1), make_loaders(), run,
                 callbacks=[CSVLogger(), TensorboardLogger(), PredictionSaverCallback(num_images=1)],
                 stages=[Stage("s" * 90, 1)])
    runner.trace(model, batch=torch.rand(1, 3, 8, 8), logdir=run)
    (run / "config.yml").write_text(CONFIG_HEADER + "seed: 1\n")
    for name in (".config.yml.a1b2c3d4.tmp", "checkpoints/.best_full.pth.k3x9_a0q.tmp",
                 f"checkpoints/.{('s' * 90 + '.1_full.pth')[:80]}.zz99zz99.tmp", "predictions/.s.1.png.abcdefgh.tmp",
                 "trace/.traced-forward.pth.12345678.tmp", "checkpoints/._metrics.json.qwertyui.tmp"):
        (run / name).write_bytes(b"half written")
    kinds = {p.relative_to(run).parts[0] for p in run.rglob("*")}
    assert {"checkpoints", "predictions", "trace", "train_log", "valid_log", "metrics.csv", "log.txt"} <= kinds
    return run


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest, symlinks=True)
    return dest


def test_overwrite_removes_every_file_segzoo_wrote(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    _train(run, overwrite_logdir=True)
    # only last_full.pth holds the optimizer state (CheckpointCallback's keep_full=False default)
    assert sorted(_hashes(run)) == ["checkpoints/_metrics.json", "checkpoints/best.pth", "checkpoints/last.pth",
                                    "checkpoints/last_full.pth", "checkpoints/train.1.pth", "log.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "log.txt"]


@pytest.mark.parametrize("mine, shown", [
    ("checkpoints/my_model_v3.pth", None), ("checkpoints/model.onnx", None), ("checkpoints/old/best.pth", "checkpoints/old/"),
    ("predictions/notes.txt", None), ("predictions/best.png", None), ("trace/model.onnx", None),
    ("train_log/notes.txt", None), ("valid_log/run2/events.out.tfevents.1.h.1.0", "valid_log/run2/"),
    (".notes.tmp", None), (".backup.tmp/data.txt", ".backup.tmp/"), ("checkpoints/.notes.tmp", None),
    ("trace/.x.pth.abcdefgh.tmp", None), ("predictions.png", None),
])
def test_overwrite_keeps_a_user_file_inside_segzoo_folders(full_run, tmp_path, mine, shown):
    """Point 1: --force removes files it recognises by name, never a folder that holds anything else."""
    run = _copy(full_run, tmp_path)
    (run / mine).parent.mkdir(parents=True, exist_ok=True)
    (run / mine).write_text("mine")
    before = _hashes(run)
    with pytest.raises(ValueError, match=re.escape(f"also holds '{shown or mine}'")):
        _train(run, overwrite_logdir=True)
    assert _hashes(run) == before


def test_overwrite_keeps_symbolic_links_and_what_they_point_to(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "best.pth").write_text("mine")
    shutil.rmtree(run / "predictions")
    (run / "predictions").symlink_to(elsewhere)  # segzoo writes no symbolic link: it is the user's
    before = _hashes(run)
    with pytest.raises(ValueError, match="also holds 'predictions'"):
        _train(run, overwrite_logdir=True)
    assert _hashes(run) == before and (elsewhere / "best.pth").read_text() == "mine"


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


def test_a_former_default_is_accepted_for_its_own_architecture_only(tmp_path):
    """The same keyword had different former defaults: UPerNet's fuse 'concat', Segformer's 'levels'."""
    from segzoo.errors import ConfigError
    from segzoo.training.launch import check_resume_config

    def cfg(name, part="decoder_params", **values):
        params = {"num_classes": 1, **({part: values} if values else {})}
        return {"model": {"name": name, "params": params}}
    check_resume_config(cfg("resnet18_segformer"), cfg("resnet18_segformer", fuse="levels"), tmp_path / "c.yml")
    with pytest.raises(ConfigError, match="model.params.decoder_params.fuse='concat'"):
        check_resume_config(cfg("resnet18_segformer"), cfg("resnet18_segformer", fuse="concat"), tmp_path / "c.yml")
    with pytest.raises(ConfigError, match="model.params.decoder_params.fuse='levels'"):
        check_resume_config(cfg("upernet"), cfg("upernet", fuse="levels"), tmp_path / "c.yml")
    check_resume_config(cfg("manet"), cfg("manet", "head_params", upsample="bilinear"), tmp_path / "c.yml")
    with pytest.raises(ConfigError, match="model.params.head_params.upsample='bilinear'"):  # not Unet's
        check_resume_config(cfg("unet"), cfg("unet", "head_params", upsample="bilinear"), tmp_path / "c.yml")


def test_move_folder_aside_never_takes_a_name_in_use(tmp_path):
    """Sibling names already taken, reserved by another process, or written into meanwhile are skipped."""
    import contextlib

    from segzoo.fileio import move_folder_aside

    src = tmp_path / "run"
    (src / "checkpoints").mkdir(parents=True)
    (src / "checkpoints" / "best.pth").write_bytes(b"weights")
    (tmp_path / "run.1").write_text("a file")
    (tmp_path / "run.2").symlink_to(tmp_path / "missing")  # a dangling link is a taken name too
    tried = []

    @contextlib.contextmanager
    def others(dest):
        tried.append(dest.name)
        if dest.name == "run.3":
            raise FileExistsError("reserved by another process")
        if dest.name == "run.4":
            (dest / "theirs.txt").write_text("theirs")  # another process writes into it meanwhile
        yield

    assert move_folder_aside(src, others) == tmp_path / "run.5"
    assert tried == ["run.3", "run.4", "run.5"] and not src.exists()
    assert (tmp_path / "run.5" / "checkpoints" / "best.pth").read_bytes() == b"weights"
    assert (tmp_path / "run.1").read_text() == "a file" and (tmp_path / "run.2").is_symlink()
    assert [p.name for p in (tmp_path / "run.4").iterdir()] == ["theirs.txt"]
    assert (tmp_path / "run.3").is_dir()  # the other process's reservation, left to it


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_killed_runs_forked_workers_do_not_keep_its_folder_locked(tmp_path):
    """DataLoader workers are forked: they must not hold the run's lock when the run dies by SIGKILL (persistent
    workers live until they notice, seconds later; resuming at once said 'in use by another running training')."""
    import signal

    from segzoo.training.logdir import LogdirClaim

    script = (
        "import os, sys, time, multiprocessing as mp\n"
        "from segzoo.training.logdir import LogdirClaim\n"
        "def child(): time.sleep(60)\n"
        "with LogdirClaim(sys.argv[1]):\n"
        "    p = mp.get_context('fork').Process(target=child); p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(FileExistsError):
            with LogdirClaim(tmp_path / "run", resume=tmp_path / "run"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        os.kill(child, 0)  # the forked child still lives
        with LogdirClaim(tmp_path / "run", resume=tmp_path / "run"):
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        proc.kill()


def test_a_run_stopped_before_its_first_checkpoint_is_not_offered_a_resume(tmp_path):
    """A run that failed in its first epoch leaves config.yml and log.txt: resuming it cannot work, so the refusal
    names a new logdir or --force only."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yml").write_text(CONFIG_HEADER + "seed: 0\n")
    (run / "log.txt").write_text("")
    with pytest.raises(FileExistsError) as info:
        check_logdir_free(run, caller="cli")
    message = str(info.value)
    assert "no checkpoint to resume from" in message and "--force" in message
    assert "runner.resume" not in message and "\n" not in message
