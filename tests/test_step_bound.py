"""benchmarks/step_bound.py (issue 23): the encoder-alone bound on a time-to-Dice lead, as a smoke run."""

from __future__ import annotations

import json

import pytest
import torch

sb = pytest.importorskip("benchmarks.step_bound", reason="run from the repository root")


def test_body_is_the_unets_encoder_alone():
    body = sb.build("encoder")
    unet = sb.build("segzoo")
    assert sum(p.numel() for p in body.parameters()) < sum(p.numel() for p in unet.parameters())
    assert not any(name.startswith(("decoder", "head")) for name, _ in body.named_parameters())
    loss = body(torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert loss.ndim == 0 and loss.requires_grad


def test_a_tiny_run_writes_its_json_and_refuses_to_replace_it(tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    args = ["--size", "32", "--batch-size", "2", "--rounds", "1", "--steps-per-epoch", "2", "--valid-batches", "1",
            "--out", str(tmp_path)]
    assert sb.main(args) == 0
    result = json.loads((tmp_path / "step_bound.json").read_text())
    assert set(result["median_s"]) == {"smp-tuned", "segzoo", "encoder", "smp-tuned eval", "segzoo eval",
                                       "encoder eval"}
    assert result["bound_vs_smp_tuned"] > 0 and "bound at equal epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sb.main(args)
    assert "pass --force" in capsys.readouterr().err
