"""Export, inference and ``segzoo predict`` of a model built with ``aux_params`` (mask and label outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _h4_helpers import NORM, tiny_model, write_checkpoint
from PIL import Image

from segzoo.inference import load_predictor
from segzoo.inference.metadata import model_metadata

AUX = {"classes": 3}


@pytest.fixture
def aux_logdir(tmp_path):
    """A log directory with best.pth of a tiny 2-class unet with a 3-label classification head."""
    model = tiny_model("unet", aux_params=AUX)
    write_checkpoint(tmp_path / "log", model, normalization=NORM)
    return tmp_path / "log", model


def _pair_close(got, ref, atol):
    assert isinstance(got, (tuple, list)) and len(got) == 2
    for g, r in zip(got, ref):
        assert tuple(g.shape) == tuple(r.shape)
        assert torch.allclose(torch.as_tensor(g), r, atol=atol), float((torch.as_tensor(g) - r).abs().max())


def test_onnx_has_named_mask_and_label_outputs_with_dynamic_batch(aux_logdir, tmp_path, cli):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    logdir, model = aux_logdir
    out = tmp_path / "m.onnx"
    code, _, err = cli("export", logdir, "--format", "onnx", "--out", out, "--input-size", 64, 64)
    assert code == 0, err
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["mask", "label"]
    assert [d.dim_param for d in graph.output[1].type.tensor_type.shape.dim][:1] == ["batch"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        _pair_close([torch.from_numpy(o) for o in session.run(None, {"input": x.numpy()})], model(x), 1e-3)
    plain = tmp_path / "plain.onnx"
    write_checkpoint(tmp_path / "plain", tiny_model("unet"), normalization=NORM)
    assert cli("export", tmp_path / "plain", "--format", "onnx", "--out", plain, "--input-size", 64, 64)[0] == 0
    assert [o.name for o in onnx.load(str(plain)).graph.output] == ["logits"]


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_torchscript_and_program_return_the_pair(aux_logdir, tmp_path, cli, fmt):
    logdir, model = aux_logdir
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    code, _, err = cli("export", logdir, "--format", fmt, "--out", out, "--input-size", 64, 64)
    assert code == 0, err
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        _pair_close(loaded(x), model(x), 1e-4)


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_predictor_returns_the_labels_on_every_backend(aux_logdir, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    logdir, model = aux_logdir
    predictor = load_predictor(logdir, backend=backend, log=lambda _: None)
    assert predictor.aux_classes == 3 and predictor.describe()["aux_classes"] == 3
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    (mask, labels), = predictor.predict([image], labels=True)
    x = predictor.preprocess(image)[None]
    with torch.no_grad():
        want = model(x)[1][0].numpy()
    assert mask.shape == (50, 70) and np.allclose(labels, want, atol=1e-3)
    (_, tiled), = predictor.predict([image], labels=True, tile=32)
    assert tiled.shape == (3,)


def test_metadata_and_predictor_of_a_model_without_aux_are_unchanged(tmp_path):
    model = tiny_model("unet")
    assert "aux_classes" not in model_metadata(model)
    assert model_metadata(tiny_model("unet", aux_params=AUX))["aux_classes"] == 3
    write_checkpoint(tmp_path / "log", model, normalization=NORM)
    predictor = load_predictor(tmp_path / "log", log=lambda _: None)
    assert predictor.aux_classes is None and "aux_classes" not in predictor.describe()
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    assert predictor.predict([image], labels=True)[0][1] is None
    assert isinstance(predictor.predict([image])[0], np.ndarray)


def test_predict_writes_a_labels_json_per_image(aux_logdir, tmp_path, cli):
    logdir, model = aux_logdir
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_labels.json", "b.png", "b_labels.json"]
    got = json.loads((out / "a_labels.json").read_text())
    predictor = load_predictor(logdir, log=lambda _: None)
    (_, want), = predictor.predict([np.asarray(Image.open(tmp_path / "in" / "a.png"))], labels=True)
    assert got["image"] == "a.png" and np.allclose(got["labels"], want, atol=1e-5)
    # re-running into the same folder refuses the old labels too, before writing anything
    (out / "a.png").unlink()
    (out / "b.png").unlink()
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress")
    assert code == 2 and "a_labels.json exists" in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "a.png").exists() and (out / "a_labels.json").read_text() == json.dumps(got, indent=2)
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress", "--force")
    assert code == 0 and (out / "a.png").exists(), err
