"""The optimizer's step kernel (segzoo.training.optimizer_kernel): torch's fused step when the user left it to torch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, make_loaders

from segzoo.checkpoint import load_checkpoint
from segzoo.training import SupervisedRunner
from segzoo.training.optimizer_kernel import choose_optimizer_kernel, choose_run_kernels


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int = 5) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        optimizer.zero_grad()
        x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
        model(x.to(next(model.parameters()).dtype)).square().mean().backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
                                  lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
                                  lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True)],
                         ids=["Adam", "AdamW", "SGD"])
def test_default_optimizers_step_fused_with_the_same_update(make):
    """The same update: equal in float64 (in float32 Adam's m / sqrt(v) of tiny gradients shows the rounding)."""
    plain_model, fused_model = _net().double(), _net().double()
    plain, fused = make(plain_model.parameters()), make(fused_model.parameters())
    assert choose_optimizer_kernel(fused) == {
        "kernel": "fused", "source": f"{type(fused).__name__} left foreach/fused to torch: fused step (same update)"}
    assert all(g["fused"] for g in fused.param_groups) and plain.param_groups[0]["fused"] is None
    _steps(plain_model, plain)
    _steps(fused_model, fused)
    for a, b in zip(plain_model.state_dict().values(), fused_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_users_own_choice_subclasses_and_stepped_optimizers_are_left_alone():
    params = list(_net().parameters())
    for kw in ({"foreach": False}, {"foreach": True}, {"fused": False}):
        opt = torch.optim.Adam(params, **kw)
        before = copy.deepcopy(opt.param_groups[0])
        assert "as given" in choose_optimizer_kernel(opt)["source"]
        assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
            {k: v for k, v in before.items() if k != "params"}

    class MyAdam(torch.optim.Adam):
        pass

    mine = MyAdam(params)
    assert choose_optimizer_kernel(mine)["kernel"] == "torch's default" and mine.param_groups[0]["fused"] is None
    stepped_model = _net()
    stepped = torch.optim.Adam(stepped_model.parameters())
    _steps(stepped_model, stepped, 1)
    assert "stepped already" in choose_optimizer_kernel(stepped)["source"]
    assert stepped.param_groups[0]["fused"] is None
    assert choose_optimizer_kernel(torch.optim.RMSprop(params))["kernel"] == "torch's default"
    assert choose_optimizer_kernel(object())["kernel"] == "?"
    half = torch.optim.Adam([torch.zeros(2, dtype=torch.int64, requires_grad=False)])
    assert choose_optimizer_kernel(half)["kernel"] == "torch's default"


def test_run_kernels_visit_each_optimizer_once():
    a, b = (torch.optim.Adam(_net().parameters()) for _ in range(2))
    assert choose_run_kernels([None]) is None
    assert choose_run_kernels([a, a])["kernel"] == "fused"
    kernels = choose_run_kernels([{"enc": b, "dec": torch.optim.SGD(_net().parameters(), lr=0.1, foreach=False)}])
    assert [k["kernel"] for k in kernels] == ["fused", "per-tensor"]


def test_a_run_records_and_says_the_kernel_and_resumes_with_it(tmp_path, capsys):
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    SupervisedRunner().train(model, nn.BCEWithLogitsLoss(), optimizer, make_loaders(), tmp_path / "run",
                             num_epochs=1, precision="fp32")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("; optimizer step fused"), first
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last_full.pth")
    assert ckpt["optimizer_kernel"]["kernel"] == "fused"
    model2 = TinyNet()
    again = torch.optim.Adam(model2.parameters(), lr=1e-3)
    SupervisedRunner().train(model2, nn.BCEWithLogitsLoss(), again, make_loaders(), tmp_path / "run",
                             num_epochs=2, precision="fp32", resume=tmp_path / "run" / "checkpoints" / "last_full.pth")
    assert again.param_groups[0]["fused"] is True and again.state  # loaded, then stepped fused


def test_reusing_the_switched_optimizer_to_resume_is_the_same_run(tmp_path):
    """The recorded settings keep the user's ``fused=None``: the same optimizer object resumes its run."""
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    runner = SupervisedRunner()
    runner.train(model, nn.BCEWithLogitsLoss(), optimizer, make_loaders(), tmp_path / "run", num_epochs=1,
                 precision="fp32")
    assert optimizer.param_groups[0]["fused"] is True
    runner.train(model, nn.BCEWithLogitsLoss(), optimizer, make_loaders(), tmp_path / "run", num_epochs=2,
                 precision="fp32", resume=tmp_path / "run" / "checkpoints" / "last_full.pth")
