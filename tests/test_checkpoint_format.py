"""The checkpoint format (issue 20, point 3): a version in every checkpoint, migrations keyed by it, one reader."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from segzoo.checkpoint import save_checkpoint
from segzoo.checkpoint_format import (
    FORMAT_KEY,
    FORMAT_VERSION,
    FORMER_DEFAULTS,
    MIGRATED_KEY,
    former_defaults_for,
    full_checkpoint,
    migrate,
    model_checkpoint,
    read_checkpoint,
)
from segzoo.errors import CheckpointError
from segzoo.models import create_model, get_model_spec

PACKAGE = Path(__file__).resolve().parents[1] / "segzoo"
SMALL = dict(num_channels=4, num_blocks=3)


def _concat_upernet():
    torch.manual_seed(0)
    return create_model("upernet", **SMALL, decoder_params={"channels": 8, "fuse": "concat"}).eval()


def _version0_upernet(model):
    """A checkpoint as segzoo wrote it before the per-level fusion default: no version, no 'fuse' in the spec."""
    spec = {"name": "upernet", "kwargs": {**get_model_spec(model)["kwargs"], "decoder_params": {"channels": 8}}}
    return {"model_state_dict": model.state_dict(), "model_spec": spec, "epoch": 3}


def test_version0_upernet_checkpoint_is_migrated_once_and_recorded(tmp_path):
    path = save_checkpoint(_version0_upernet(_concat_upernet()), tmp_path / "old.pth")
    ck = read_checkpoint(path)
    assert ck[FORMAT_KEY] == FORMAT_VERSION == 3
    assert ck[MIGRATED_KEY] == [1, 2, 3]
    assert ck["model_spec"]["kwargs"]["decoder_params"] == {"channels": 8, "fuse": "concat"}
    assert ck["epoch"] == 3
    assert migrate(ck) == ck  # runs once: nothing left to apply, nothing recorded twice
    save_checkpoint(ck, tmp_path / "again.pth")  # a migrated checkpoint written back reads the same
    again = read_checkpoint(tmp_path / "again.pth")
    assert again[MIGRATED_KEY] == [1, 2, 3] and again["model_spec"] == ck["model_spec"]


def test_migration1_leaves_what_it_does_not_concern_alone():
    concat = _concat_upernet()
    levels = create_model("upernet", **SMALL, decoder_params={"channels": 8})
    named = {"model_state_dict": levels.state_dict(), "model_spec": get_model_spec(levels)}
    assert migrate(named)["model_spec"] == get_model_spec(levels)  # the per-level fusion: no fuse added
    explicit = {"model_state_dict": concat.state_dict(), "model_spec": get_model_spec(concat)}
    assert migrate(explicit)["model_spec"] == get_model_spec(concat)
    unet = create_model("unet", **SMALL)
    ck = {"model_state_dict": unet.state_dict(), "model_spec": get_model_spec(unet)}
    out = migrate(ck)
    assert out["model_spec"] == get_model_spec(unet) and out[FORMAT_KEY] == FORMAT_VERSION
    assert FORMAT_KEY not in ck  # the caller's dict is not modified
    # a checkpoint already in the current format is never migrated, whatever its spec says
    current = {**_version0_upernet(concat), FORMAT_KEY: FORMAT_VERSION}
    assert migrate(current) == current
    # DDP-prefixed weights (a user's torch.save of a wrapped model) are recognised as well
    old = _version0_upernet(concat)
    old["model_state_dict"] = {f"module.{k}": v for k, v in old["model_state_dict"].items()}
    assert migrate(old)["model_spec"]["kwargs"]["decoder_params"]["fuse"] == "concat"


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])
def test_newer_format_is_refused_in_one_line(tmp_path, version):
    path = save_checkpoint({"model_state_dict": {"w": torch.ones(1)}, FORMAT_KEY: version}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match=r"written by a newer segzoo .*upgrade segzoo") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    import segzoo

    with pytest.raises(CheckpointError, match="newer segzoo"):
        segzoo.load_model(path)


@pytest.mark.parametrize("version", ["1", -1, True, 1.0, None])
def test_malformed_format_version_is_refused(tmp_path, version):
    path = save_checkpoint({"model_state_dict": {"w": torch.ones(1)}, FORMAT_KEY: version}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"{FORMAT_KEY} is .*expected a whole number"):
        read_checkpoint(path)


def test_cli_refuses_a_newer_checkpoint_in_one_line(tmp_path, capsys):
    from segzoo.cli import main

    model = create_model("unet", **SMALL)
    ck = {"model_state_dict": model.state_dict(), "model_spec": get_model_spec(model), FORMAT_KEY: FORMAT_VERSION + 1}
    path = save_checkpoint(ck, tmp_path / "best.pth")
    assert main(["trace", str(path), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by a newer segzoo" in err[0] and str(path) in err[0], err
    assert not (tmp_path / "out").exists()


def test_loaded_info_carries_the_migrated_spec(tmp_path):
    """Export / predict / serve metadata come from load_model_info: the spec the model was rebuilt from."""
    from segzoo.loading import load_model_info

    old = _concat_upernet()
    path = save_checkpoint(_version0_upernet(old), tmp_path / "best.pth")
    loaded = load_model_info(path)
    assert loaded.model.decoder.fuse_mode == "concat"
    assert loaded.info["model_spec"]["kwargs"]["decoder_params"]["fuse"] == "concat"
    assert loaded.info[MIGRATED_KEY] == [1, 2, 3]


def test_trainer_checkpoints_carry_the_format_version():
    from segzoo.training import RunnerState

    model = create_model("unet", **SMALL)
    state = RunnerState(model=model, checkpoint_data={FORMAT_KEY: 0, "normalization": None})
    assert model_checkpoint(state)[FORMAT_KEY] == FORMAT_VERSION  # extra data cannot pass for another format
    full = full_checkpoint(state, {})
    assert full[FORMAT_KEY] == FORMAT_VERSION and MIGRATED_KEY not in full
    assert {"rng_state", "callbacks_state", "optimizer_state_dict", "run_settings"} <= set(full)


def test_former_defaults_come_from_the_migrations():
    from segzoo.training import launch, run_settings

    assert FORMER_DEFAULTS == {"upernet": {"model.params.decoder_params.fuse": ("concat",)},
                               "unetplusplus": {"model.params.decoder_params.complexity": (0,)},
                               "manet": {"model.params.head_params.num_upsample_blocks": (0,),
                                         "model.params.head_params.upsample": ("bilinear",),
                                         "model.params.head_params.norm": ("bn",)},
                               "segformer": {"model.params.decoder_params.fuse": ("levels",)}}
    assert run_settings.former_defaults_for is former_defaults_for and launch.former_defaults_for is former_defaults_for
    # per architecture: the same keyword's former value of one is not accepted for another
    assert former_defaults_for("resnet18_upernet") == {"model.params.decoder_params.fuse": ("concat",)}
    assert former_defaults_for("segformer") == {"model.params.decoder_params.fuse": ("levels",)}
    assert former_defaults_for("my_segformer") == {} and former_defaults_for(None) == {}


def test_upernet_former_format_is_special_cased_in_one_module():
    """What UPerNet checkpoints looked like before the per-level fusion lives in segzoo/checkpoint_format.py only."""
    pattern = re.compile(r"fuse_parts\.0\.weight|decoder\.fuse\.0\.weight|upernet_fusion|per-level fusion default|"
                         r"decoder_params\.fuse")
    found = sorted({str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())})
    assert found == ["checkpoint_format.py"], found
    defined = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               for node in ast.parse(p.read_text()).body if isinstance(node, ast.Assign | ast.AnnAssign)
               for t in getattr(node, "targets", [getattr(node, "target", None)])
               if isinstance(t, ast.Name) and t.id == "FORMER_DEFAULTS"]
    assert defined == ["checkpoint_format.py"], defined


def _imports(path):
    """``(module imported, not at the top level)`` for each ``from segzoo... import`` of ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    return [(n.module, id(n) not in top) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and n.module.startswith("segzoo")]


def test_checkpoint_callback_and_resume_do_not_import_each_other():
    resume = _imports(PACKAGE / "training" / "resume.py")
    callback = _imports(PACKAGE / "training" / "callbacks" / "checkpoint.py")
    assert not [m for m, _ in resume if m.startswith("segzoo.training.callbacks")], resume
    assert not [m for m, inner in callback if inner], callback  # no import hidden in a function
    assert ("segzoo.checkpoint_format", False) in resume and ("segzoo.checkpoint_format", False) in callback
    fmt = _imports(PACKAGE / "checkpoint_format.py")
    # the format sits below training (RunnerState is named for type checkers only)
    assert not [m for m, inner in fmt if m.startswith("segzoo.training") and not inner], fmt


# ---- migrations 2 and 3: UnetPlusPlus complexity 1 and MAnet's two head upsample steps (format 2), Segformer's
# concat fusion (format 3) became the defaults --------------------------------------------------------------------

# case -> (part, the former defaults, the last format written with them); a case is named by its architecture
FORMER = {"unetplusplus": ("decoder_params", {"complexity": 0}, 1),
          "manet": ("head_params", {"num_upsample_blocks": 0, "upsample": "bilinear", "norm": "bn"}, 1),
          "manet-bilinear-steps": ("head_params", {"upsample": "bilinear", "norm": "bn"}, 2),
          "manet-transposed-bn-steps": ("head_params", {"norm": "bn"}, 2),
          "segformer": ("decoder_params", {"fuse": "levels"}, 2)}


def _arch(case):
    """The architecture a FORMER case is of (``"manet-bilinear-steps"`` -> ``"manet"``)."""
    return case.split("-")[0]


def _former_default_checkpoint(case, version=None, **extra):
    """A checkpoint as segzoo wrote it before the default changed: the spec not naming the changed keyword."""
    part, former, last = FORMER[case]
    arch = _arch(case)
    torch.manual_seed(0)
    model = create_model(f"resnet18_{arch}", num_classes=1, pretrained=False, **{part: {**former, **extra}}).eval()
    spec = {"name": f"resnet18_{arch}", "kwargs": {"pretrained": False, **({part: extra} if extra else {})}}
    return model, {"model_state_dict": model.state_dict(), "model_spec": spec, FORMAT_KEY: last if version is None
                   else version}


@pytest.mark.parametrize("case, version", [("unetplusplus", None), ("manet", None), ("manet-bilinear-steps", None),
                                           ("manet-transposed-bn-steps", None), ("segformer", None), ("segformer", 1),
                                           ("segformer", 0)])
def test_former_default_checkpoints_load_with_their_outputs(tmp_path, case, version):
    from segzoo.loading import load_model_info

    model, ck = _former_default_checkpoint(case, version)
    path = save_checkpoint(ck, tmp_path / "best.pth")
    loaded = load_model_info(path)
    part, former, _ = FORMER[case]
    assert loaded.info["model_spec"]["kwargs"][part] == former, loaded.info["model_spec"]
    assert loaded.info[MIGRATED_KEY] == list(range(ck[FORMAT_KEY] + 1, FORMAT_VERSION + 1))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    new = create_model(f"resnet18_{_arch(case)}", num_classes=1, pretrained=False)  # the current default differs
    assert set(new.state_dict()) != set(model.state_dict())


@pytest.mark.parametrize("case", list(FORMER))
def test_table_migrations_leave_what_they_do_not_concern_alone(case):
    part, former, _ = FORMER[case]
    current = create_model(f"resnet18_{_arch(case)}", num_classes=1, pretrained=False)
    ck = {"model_state_dict": current.state_dict(), "model_spec": get_model_spec(current), FORMAT_KEY: 1}
    assert migrate(ck)["model_spec"] == get_model_spec(current)  # new-default weights: nothing added
    _, named = _former_default_checkpoint(case, **former)  # the run named the keyword itself
    assert migrate(named)["model_spec"] == named["model_spec"]
    _, other = _former_default_checkpoint(case)
    other["model_spec"] = {"name": "resnet18_unet", "kwargs": {}}  # weights of one model, the spec of another
    assert migrate(other)["model_spec"] == other["model_spec"]
    other["model_spec"] = {"name": f"my_{_arch(case)}", "kwargs": {}}  # a user's registered name is not a table row
    assert migrate(other)["model_spec"] == other["model_spec"]


def test_a_resume_into_the_new_manet_default_names_the_former_one():
    from segzoo.checkpoint_format import former_default_hint

    old, _ = _former_default_checkpoint("manet")
    new = create_model("resnet18_manet", num_classes=1, pretrained=False)
    hint = former_default_hint(old.state_dict().keys(), new.state_dict().keys())
    assert "model.params.head_params.num_upsample_blocks=0" in hint
    assert "complexity" not in hint and "fuse" not in hint  # only what these weights have
    assert former_default_hint(new.state_dict().keys(), new.state_dict().keys()) == ""


def test_a_resume_into_the_new_segformer_default_names_the_former_one():
    from segzoo.checkpoint_format import former_default_hint

    old, _ = _former_default_checkpoint("segformer")
    new = create_model("resnet18_segformer", num_classes=1, pretrained=False)
    assert new.decoder.fuse_mode == "concat"
    hint = former_default_hint(old.state_dict().keys(), new.state_dict().keys())
    assert hint.endswith("resume with model.params.decoder_params.fuse=levels)"), hint
    assert former_default_hint(new.state_dict().keys(), new.state_dict().keys()) == ""


@pytest.mark.parametrize("case", list(FORMER))
def test_former_default_save_pretrained_folders_load_with_their_outputs(tmp_path, case):
    from segzoo.models.pretrained import CONFIG_NAME

    model, ck = _former_default_checkpoint(case)
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / CONFIG_NAME).read_text())
    config["spec"] = ck["model_spec"]  # as saved before 2026-12-07: the changed keyword not named
    (tmp_path / "old" / CONFIG_NAME).write_text(json.dumps(config))
    loaded = type(model).from_pretrained(tmp_path / "old")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
