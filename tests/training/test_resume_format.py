"""Resuming through the checkpoint format: an old (version 0) full checkpoint resumes, a newer one is refused."""

import pytest
import torch
from _helpers import TinyNet, train

from segzoo.checkpoint import load_checkpoint, save_checkpoint
from segzoo.checkpoint_format import FORMAT_KEY, FORMAT_VERSION
from segzoo.errors import CheckpointError


def _rewrite(path, **changes):
    """Rewrite checkpoint ``path`` with ``changes`` (``None`` removes a key), as another segzoo would have."""
    ck = load_checkpoint(path)
    for key, value in changes.items():
        if value is None:
            ck.pop(key, None)
        else:
            ck[key] = value
    save_checkpoint(ck, path)


@pytest.mark.slow
def test_version0_full_checkpoint_resumes_and_newer_is_refused(loaders, tmp_path):
    torch.manual_seed(0)
    train(TinyNet(), loaders, tmp_path)
    full = tmp_path / "checkpoints" / "last_full.pth"
    assert load_checkpoint(full)[FORMAT_KEY] == FORMAT_VERSION
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pth")[FORMAT_KEY] == FORMAT_VERSION

    _rewrite(full, **{FORMAT_KEY: FORMAT_VERSION + 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(CheckpointError, match=r"last_full\.pth was written by a newer segzoo .*upgrade segzoo"):
        train(TinyNet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before  # nothing written

    _rewrite(full, **{FORMAT_KEY: None})  # as written before the format had a version
    state = train(TinyNet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    assert state.global_epoch == 2
    assert load_checkpoint(full)[FORMAT_KEY] == FORMAT_VERSION  # written again in the current format
