"""torch.jit.trace, torch.export and torch.compile(fullgraph=True) reproduce the eager models.

Backends of torch.compile: "inductor" works here (g++ is present) but compiling from a cold
cache costs ~25 s for the first model (C++ toolchain checks, headers) and ~10 s for each next
one on 2 CPU cores; it is run on one architecture (pspnet: shape-dependent pooling matrices,
interpolation, the most unusual graph). "aot_eager" runs the same graph capture
(dynamo with fullgraph=True, so any graph break fails) and AOTAutograd functionalization
without code generation, in ~1.5 s per model: it covers every architecture.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _models import tiny_model
from torch.export import Dim

from segzoo.architectures import CATALYST_MODELS, resnet_architectures
from segzoo.models import ARCHITECTURES

TINY_ARCHS = list(ARCHITECTURES)  # every architecture of the table, tiny generic encoder
OTHER = [n for n in CATALYST_MODELS.values() if n]  # registered outside the two families (Catalyst 19.x's MobileUnet, width 0.5)
# the ResNet family on the same table; unet and pspnet (stage-cut encoder) run fast, the rest are marked slow
RESNET = [pytest.param(f"resnet18_{arch}", marks=() if arch in ("unet", "pspnet") else pytest.mark.slow)
          for arch in resnet_architectures()]


def _assert_matches(fn, model, shapes, atol=1e-5, rtol=1e-4):
    gen = torch.Generator().manual_seed(1)
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x)
            got = fn(x)
        assert got.shape == ref.shape == (b, model.num_classes, h, w)
        assert torch.allclose(got, ref, atol=atol, rtol=rtol), (b, h, w, float((got - ref).abs().max()))


@pytest.mark.parametrize("name", TINY_ARCHS + RESNET + OTHER)
def test_jit_trace_matches_eager_at_other_sizes(name):
    model = tiny_model(name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        # input checks on shapes are frozen as constants; the other sizes below show they do no harm
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace=False: the comparison below is the check (the default one re-traces, doubling the cost)
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
    # another batch, sizes that are not multiples of the model's stride (padding is traced, not frozen)
    _assert_matches(traced, model, [(2, 37, 53), (1, 96, 64)])


def _export(model, example):
    """torch.export with dynamic batch and H, W = k * size_multiple, as segzoo.export documents."""
    m = model.size_multiple
    dims = {0: Dim("batch", min=1, max=64),
            2: Dim("h_blocks", min=2, max=4096 // m) * m, 3: Dim("w_blocks", min=2, max=4096 // m) * m}
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes={"x": dims})


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("name", TINY_ARCHS + ["resnet18_unet", "resnet18_deeplabv3plus"] + OTHER)
def test_torch_export_dynamic_shapes_match_eager(name):
    model = tiny_model(name)
    m = model.size_multiple
    base = max(m, 8)
    module = _export(model, torch.randn(2, 3, 4 * base, 4 * base)).module()
    _assert_matches(module, model, [(1, 6 * base, 8 * base), (3, 8 * base, 5 * base)])
    if m > 1:  # other sizes are refused by the program's guards, not answered wrongly
        with pytest.raises(Exception, match="[Gg]uard"), torch.no_grad():
            module(torch.randn(1, 3, 4 * m + 1, 4 * m))


def test_segzoo_declares_what_torch_export_cannot_do(tmp_path):
    """segzoo.export.export_program refuses example sizes its dynamic shapes cannot describe."""
    from segzoo.export import export_program

    model = tiny_model("unet")
    m = model.size_multiple
    out = tmp_path / "m.pt2"
    with pytest.raises(ValueError, match=f"multiples of {m}"):
        export_program(model, out, torch.randn(2, 3, 4 * m + 1, 4 * m))
    with pytest.raises(ValueError, match=f"at least {2 * m}"):
        export_program(model, out, torch.randn(2, 3, m, 4 * m))
    with pytest.raises(ValueError, match="batch of at least 2"):
        export_program(model, out, torch.randn(1, 3, 4 * m, 4 * m))
    assert not out.exists()


@pytest.fixture
def fresh_dynamo():
    """Compiled forwards of one class share a code object: reset dynamo so no test hits the recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name, backend", [(arch, "aot_eager") for arch in TINY_ARCHS + OTHER] + [("pspnet", "inductor")])
def test_compile_fullgraph_matches_eager(fresh_dynamo, name, backend):
    model = tiny_model(name)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    atol = 1e-4 if backend == "inductor" else 1e-5  # inductor may reorder reductions
    _assert_matches(compiled, model, [(2, 32, 32)], atol=atol)


@pytest.mark.slow
def test_compile_fullgraph_recompiles_for_new_sizes(fresh_dynamo):
    """A second, odd size (padding amounts change) recompiles with dynamic shapes, still without graph breaks."""
    model = tiny_model("pspnet")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _assert_matches(compiled, model, [(2, 32, 32), (3, 37, 53)])
