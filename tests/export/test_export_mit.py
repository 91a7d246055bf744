"""Segformer on a Mix Transformer (a model built from an encoder instance): ONNX, TorchScript, torch.export."""

from __future__ import annotations

import warnings

import pytest
import torch

import segzoo
from segzoo.encoders import MixTransformerEncoder
from segzoo.export import export_onnx, export_program, trace_model

pytestmark = [pytest.mark.export, pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return segzoo.Segformer(num_classes=2, encoder=MixTransformerEncoder("mit_b0")).eval()


@pytest.mark.parametrize("opset", [11, 17])
def test_onnx_at_odd_sizes(tmp_path, model, opset):
    """Opset 11 has no attention operator: the attention is written out for the exporter."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = export_onnx(model, tmp_path / "m.onnx", torch.rand(1, 3, 64, 64), opset=opset)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 70, 45)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-3)


def test_torchscript_at_odd_sizes(model):
    traced = trace_model(model, torch.rand(1, 3, 64, 64))
    x = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_torch_export_program(tmp_path, model):
    path = export_program(model, tmp_path / "m.pt2", torch.rand(2, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(str(path)).module()
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5, rtol=1e-4)
