"""segzoo.load_model: rebuild from the spec or a user factory, with clear errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from _h4_helpers import NORM, tiny_model, write_checkpoint

import segzoo
from segzoo.checkpoint import save_checkpoint
from segzoo.errors import CheckpointError, ConfigError
from segzoo.loading import load_model_info


def test_rebuilds_registry_model_with_weights(logdir):
    ref = tiny_model()
    model = segzoo.load_model(logdir)
    assert not model.training
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    for name in ("last", "stage1.2", str(logdir / "checkpoints" / "best.pth")):
        assert isinstance(segzoo.load_model(logdir, name), type(ref))


def test_info_carries_path_and_normalization(logdir):
    loaded = load_model_info(logdir / "checkpoints" / "last.pth")
    assert loaded.path.name == "last.pth"
    assert loaded.normalization == NORM
    assert loaded.info["model_spec"]["name"] == "unet"
    assert "model_state_dict" not in loaded.info


def test_custom_model_through_import_path(tmp_path, user_models):
    import h4_user_models

    model = h4_user_models.pointwise(num_classes=4)
    path = write_checkpoint(tmp_path / "log", model, spec=None)
    with pytest.raises(CheckpointError, match="no model_spec.*package.module:factory"):
        segzoo.load_model(path)
    # kwargs from the spec are passed to the factory when there is one
    spec = {"name": "pointwise", "kwargs": {"num_classes": 4}}
    path2 = write_checkpoint(tmp_path / "log2", model, spec=spec)
    loaded = segzoo.load_model(path2, model_factory="h4_user_models:pointwise")
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))
    # without a spec, the factory is called with no arguments (its default: 3 classes) -> shape mismatch
    with pytest.raises(CheckpointError, match="shape mismatch"):
        segzoo.load_model(path, model_factory="h4_user_models:pointwise")
    assert segzoo.load_model(path, model_factory=lambda: h4_user_models.pointwise(4))(x).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("factory, message", [
    ("no_colon", "package.module:factory"),
    ("h4_missing_module_xyz:build", "cannot import model factory.*h4_missing_module_xyz"),
    ("h4_user_models:missing", "has no attribute 'missing'"),
    ("h4_user_models:NOT_CALLABLE", "not callable"),
])
def test_factory_errors(tmp_path, user_models, factory, message):
    path = write_checkpoint(tmp_path / "log", torch.nn.Conv2d(3, 3, 1), spec=None)
    with pytest.raises(ConfigError, match=message):
        segzoo.load_model(path, model_factory=factory)


def test_factory_returning_non_module(tmp_path, user_models):
    path = write_checkpoint(tmp_path / "log", torch.nn.Conv2d(3, 3, 1), spec=None)
    with pytest.raises(TypeError, match="returned a str"):
        segzoo.load_model(path, model_factory="h4_user_models:not_a_module")


def test_state_dict_mismatch_is_named(tmp_path):
    model = tiny_model()
    spec = {"name": "unet", "kwargs": {"num_classes": 3, "num_channels": 8, "num_blocks": 2}}
    path = write_checkpoint(tmp_path / "log", model, spec=spec)
    with pytest.raises(CheckpointError, match="do not fit the model.*shape mismatch"):
        segzoo.load_model(path)
    state = {k: v for k, v in model.state_dict().items() if "head" not in k}
    save_checkpoint({"model_state_dict": state, "model_spec": segzoo.get_model_spec(model)}, path)
    with pytest.raises(CheckpointError, match="missing key"):
        segzoo.load_model(path)


def test_missing_and_unknown_checkpoints(tmp_path, logdir):
    with pytest.raises(FileNotFoundError, match="no such log directory"):
        segzoo.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="available: best, last, stage1.2"):
        segzoo.load_model(logdir, "bset")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch h4_pwned",))


def test_pickle_payload_is_refused_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "model_spec": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        segzoo.load_model(path)
    assert not (tmp_path / "h4_pwned").exists()


def test_truncated_and_foreign_files(tmp_path, logdir):
    data = (logdir / "checkpoints" / "best.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        segzoo.load_model(truncated)
    foreign = tmp_path / "foreign.pth"
    foreign.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError):
        segzoo.load_model(foreign)
