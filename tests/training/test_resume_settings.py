"""Resume compares what a run was given, stored in its full checkpoint (issue 19, points 6 and 7)."""

import copy
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import TinyNet, make_loaders

from segzoo.errors import CheckpointError, ConfigError
from segzoo.training import Stage, SupervisedRunner
from segzoo.training.launch import check_resume_config


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(logdir, resume=None, num_epochs=1, t_max=8, lr=0.1, seed=0, pos_weight=None, criterion=None,
         n_train=16, **kw):
    """A Python run: SGD + CosineAnnealingLR(T_max) + BCE, everything built afresh as a script would."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    criterion = criterion or torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    return SupervisedRunner().train(model, criterion, opt, make_loaders(n_train=n_train), logdir, scheduler=sched,
                                    num_epochs=num_epochs, seed=seed, resume=resume, **kw)


@pytest.fixture
def copied(tmp_path):
    """A Python run's last_full.pth copied into a folder of its own (no config.yml anywhere)."""
    _run(tmp_path / "run")
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "run" / "checkpoints" / "last_full.pth", tmp_path / "copy" / "last_full.pth")
    return tmp_path / "copy" / "last_full.pth"


def test_copied_checkpoint_refuses_a_changed_scheduler_setting(copied, tmp_path):
    """The saved scheduler state would set T_max back to 8 while the run was given 100."""
    with pytest.raises(ValueError, match=r"changed scheduler: scheduler\.T_max=100 \(the run used 8\)") as err:
        _run(tmp_path / "new", resume=copied, num_epochs=2, t_max=100)
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "new").exists()
    state = _run(tmp_path / "new", resume=copied, num_epochs=2)  # the run's settings resume
    assert state.global_epoch == 2 and state.scheduler.T_max == 8


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, r"changed seed: seed=1 \(the run used 0\)"),
    ({"lr": 0.5}, r"changed optimizer: optimizer\.groups\[0\]\.lr=0\.5 \(the run used 0\.1\)"),
    ({"pos_weight": torch.tensor([3.0])}, r"changed criterion: criterion\.pos_weight=3\.0 \(the run used None\)"),
    ({"criterion": torch.nn.MSELoss()}, r"criterion\.class='torch\.nn\.modules\.loss\.MSELoss' \(the run used "
                                        r"'torch\.nn\.modules\.loss\.BCEWithLogitsLoss'\)"),
    ({"n_train": 12}, r"changed loaders: loaders\.train\.dataset\.length=12 \(the run used 16\)"),
    ({"main_metric": "bce"}, r"main_metric='bce' \(the run used 'loss'\)"),
])
def test_python_resume_refuses_a_changed_setting(tmp_path, change, message):
    """A run started from Python has no config.yml: what train() was given is compared, in one line."""
    run = tmp_path / "run"
    _run(run)
    before = _hashes(run)
    with pytest.raises(ValueError, match=message) as err:
        _run(run, resume=run, num_epochs=2, **change)
    assert len(str(err.value).splitlines()) == 1 and "new logdir" in str(err.value)
    assert _hashes(run) == before


def test_python_resume_accepts_what_may_change(tmp_path):
    run = tmp_path / "run"
    _run(run)
    state = _run(run, resume=run, num_epochs=2, verbose=True, nonfinite="skip", channels_last=True, timeit=True)
    assert state.global_epoch == 2


def test_objects_reused_after_training_resume(tmp_path):
    """A scheduler / optimizer that already ran (the same script resuming) holds progress, not other settings."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    args = (model, torch.nn.BCEWithLogitsLoss(), opt, make_loaders(), tmp_path)
    SupervisedRunner().train(*args, scheduler=sched, num_epochs=2)
    state = SupervisedRunner().train(*args, scheduler=sched, num_epochs=3, resume=tmp_path)
    assert state.global_epoch == 3


def test_stages_are_compared_and_may_be_appended(tmp_path):
    def run(first_lr=0.1, second_lr=0.1, more=False, **kw):
        torch.manual_seed(0)
        model = TinyNet()
        stages = [Stage("warmup", 1, optimizer=torch.optim.SGD(model.parameters(), first_lr)),
                  Stage("main", 1, optimizer=torch.optim.Adam(model.parameters(), second_lr))]
        stages += [Stage("more", 1, optimizer=torch.optim.SGD(model.parameters(), 0.3))] if more else []
        return SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), None, make_loaders(), tmp_path,
                                        stages=stages, **kw)

    run()
    with pytest.raises(ValueError, match=r"stages\[1\]\.optimizer\.groups\[0\]\.lr=0\.5 \(the run used 0\.1\)"):
        run(second_lr=0.5, more=True, resume=tmp_path)
    with pytest.raises(ValueError, match=r"stages\[0\]\.optimizer\.groups\[0\]\.lr=0\.5 \(the run used 0\.1\)"):
        run(first_lr=0.5, more=True, resume=tmp_path)  # a finished stage too: the run's history stays one run
    assert run(more=True, resume=tmp_path).global_epoch == 3  # a stage appended at the end is new


def test_checkpoints_without_run_settings_resume_as_before(tmp_path):
    run = tmp_path / "run"
    _run(run)
    full = run / "checkpoints" / "last_full.pth"
    ck = torch.load(full, weights_only=True)
    assert ck["run_settings"]["train"]["stages"][0]["scheduler"]["T_max"] == 8
    torch.save({k: v for k, v in ck.items() if k != "run_settings"}, full)
    with pytest.raises(ValueError, match=r"optimizer\.groups\[0\]\.lr=0\.5"):  # the older optimizer check stays
        _run(run, resume=run, num_epochs=2, lr=0.5)
    assert _run(run, resume=run, num_epochs=2).global_epoch == 2


@pytest.mark.parametrize("crafted", ["text", {"train": []}, {"train": {"stages": ["x"]}}])
def test_crafted_run_settings_are_refused_in_one_line(tmp_path, crafted):
    run = tmp_path / "run"
    _run(run)
    full = run / "checkpoints" / "last_full.pth"
    torch.save({**torch.load(full, weights_only=True), "run_settings": crafted}, full)
    with pytest.raises(CheckpointError, match="run_settings.*not what segzoo writes|stage 0 is not what") as err:
        _run(run, resume=run, num_epochs=2)
    assert len(str(err.value).splitlines()) == 1


# ---- configs: one normalised spelling (point 7) ----------------------------------------------------

COSINE = {"name": "CosineAnnealingLR", "params": {"T_max": 8}}
STEP = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.01}}
BASE = {"seed": 1, "logdir": "LOGDIR", "model": {"name": "unet", "params": {"num_channels": 4, "num_blocks": 2}},
        "data": {"kind": "procedural", "params": {"image_size": 32}, "train_size": 8, "valid_size": 4,
                 "batch_size": 4},
        "optimizer": {"name": "Adam", "params": {"lr": 0.0017}}, "scheduler": COSINE, "num_epochs": 2,
        "runner": {"device": "cpu"}}


def _cfg(**changes):
    cfg = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    return cfg


def test_one_stage_rewritten_as_stages_cannot_change_the_scheduler(tmp_path):
    saved = tmp_path / "config.yml"
    with pytest.raises(ConfigError, match=r"stages\.0\.scheduler\.name='StepLR', but the run was trained with "
                                          r"stages\.0\.scheduler\.name='CosineAnnealingLR'"):
        check_resume_config(BASE, _cfg(num_epochs=None, stages=[{"name": "train", "num_epochs": 4,
                                                                 "scheduler": STEP}]), saved)
    with pytest.raises(ConfigError, match=r"stages\.0\.optimizer\.params\.lr=0\.5, but the run was trained with "
                                          r"stages\.0\.optimizer\.params\.lr=0\.0017"):
        check_resume_config(BASE, _cfg(num_epochs=None, stages=[{"name": "train", "num_epochs": 4,
                                                                 "optimizer": {"params": {"lr": 0.5}}}]), saved)
    with pytest.raises(ConfigError, match=r"resuming with scheduler\.params\.T_max=100, but the run was trained "
                                          r"with scheduler\.params\.T_max=8 \(.*config\.yml\)"):
        check_resume_config(BASE, _cfg(scheduler={"name": "CosineAnnealingLR", "params": {"T_max": 100}}), saved)
    # the same run spelled either way, with more epochs, resumes
    same = _cfg(num_epochs=None, scheduler=None, optimizer=None,
                stages=[{"name": "train", "num_epochs": 4, "scheduler": COSINE,
                         "optimizer": {"name": "Adam", "params": {"lr": 0.0017}}}])
    check_resume_config(BASE, same, saved)
    check_resume_config(same, _cfg(num_epochs=6), saved)
    check_resume_config(BASE, _cfg(num_epochs=None, stages=[{"name": "train", "num_epochs": 4},
                                                            {"name": "more", "num_epochs": 1, "scheduler": STEP}]),
                        saved)  # a stage appended at the end is new


def test_multi_stage_configs_compare_each_stage(tmp_path):
    two = _cfg(num_epochs=None, stages=[{"name": "warmup", "num_epochs": 1, "optimizer": {"params": {"lr": 1e-4}}},
                                        {"name": "main", "num_epochs": 2}])
    changed = copy.deepcopy(two)
    changed["stages"][1]["scheduler"] = STEP
    with pytest.raises(ConfigError, match=r"stages\.1\.scheduler\.name='StepLR'"):
        check_resume_config(two, changed, tmp_path / "config.yml")
    with pytest.raises(ConfigError, match=r"stages\.1\.name=<absent>, but the run was trained with "
                                          r"stages\.1\.name='main'"):
        check_resume_config(two, _cfg(num_epochs=None, stages=two["stages"][:1]), tmp_path / "config.yml")


def test_normalized_config_is_a_valid_config_of_the_same_run():
    from segzoo.training.build import stage_configs
    from segzoo.training.config import validate
    from segzoo.training.launch import normalized_config

    for cfg in (BASE, _cfg(optimizer={"name": "RMSprop"}, scheduler=None, loss={"name": "DiceLoss"},
                           callbacks=[{"name": "DiceCallback"}]),
                _cfg(num_epochs=None, stages=[{"name": "a", "num_epochs": 1, "optimizer": {"name": "SGD"}},
                                              {"num_epochs": 2, "scheduler": STEP}])):
        before = copy.deepcopy(cfg)
        norm = normalized_config(cfg)
        assert cfg == before  # the given config is left as it was
        validate(copy.deepcopy(norm))
        assert stage_configs(norm) == stage_configs(cfg) == norm["stages"]
        assert normalized_config(norm) == norm


# ---- segzoo train ---------------------------------------------------------------------------------

def _train_cfg(logdir, **changes):
    from segzoo.training.config import validate

    cfg = _cfg(**changes)
    cfg["logdir"] = str(logdir)
    validate(cfg)
    return cfg


@pytest.mark.slow
def test_cli_resume_of_a_copied_checkpoint_compares_the_stored_config(tmp_path):
    """No config.yml beside a copied (or linked) last_full.pth: its stored config is compared."""
    from segzoo.training.config import train_from_config

    train_from_config(_train_cfg(tmp_path / "run"))
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "run" / "checkpoints" / "last_full.pth", tmp_path / "copy" / "last_full.pth")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "last_full.pth").symlink_to(tmp_path / "run" / "checkpoints" / "last_full.pth")
    before = _hashes(tmp_path)
    for source in ("copy", "link"):
        resume = {"device": "cpu", "resume": str(tmp_path / source / "last_full.pth")}
        with pytest.raises(ConfigError, match=r"scheduler\.params\.T_max=100, but the run was trained with "
                                              r"scheduler\.params\.T_max=8 \(.*last_full\.pth\)"):
            train_from_config(_train_cfg(tmp_path / "new", num_epochs=3, runner=resume,
                                         scheduler={"name": "CosineAnnealingLR", "params": {"T_max": 100}}))
        for change, key in (({"seed": 2}, "seed=2"), ({"data": {**BASE["data"], "train_size": 12}},
                                                      "data.train_size=12"),
                            ({"loss": {"name": "DiceLoss"}}, "loss.name='DiceLoss'"),
                            ({"num_epochs": None, "stages": [{"name": "train", "num_epochs": 4, "scheduler": STEP}]},
                             "stages.0.scheduler.name='StepLR'")):
            with pytest.raises(ConfigError, match=f"resuming with {key.replace('.', '[.]')}"):
                train_from_config(_train_cfg(tmp_path / "new", **{"runner": resume, "num_epochs": 3, **change}))
    assert _hashes(tmp_path) == before and not (tmp_path / "new").exists()
    resume = {"device": "cpu", "resume": str(tmp_path / "copy" / "last_full.pth")}
    state = train_from_config(_train_cfg(tmp_path / "new", num_epochs=None, runner=resume,
                                         stages=[{"name": "train", "num_epochs": 3}]))
    assert state.global_epoch == 3 and state.scheduler.T_max == 8


@pytest.mark.slow
def test_cli_refusal_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump(_train_cfg(tmp_path / "run")))
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "segzoo.cli", "train", "--config", str(cfg), *args],
                             capture_output=True, text=True, timeout=600)
        return out.returncode, out.stderr
    rc, err = cli()
    assert rc == 0, err
    rc, err = cli(f"runner.resume={tmp_path / 'run'}", "~num_epochs",
                  "stages=[{name: train, num_epochs: 4, scheduler: {name: StepLR, params: {step_size: 1}}}]")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "stages.0.scheduler.name='StepLR', but the run was trained with stages.0.scheduler.name=" \
           "'CosineAnnealingLR'" in err, err
