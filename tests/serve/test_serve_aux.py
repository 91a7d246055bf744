"""``segzoo serve`` of a model built with ``aux_params``: the labels in the answer (in process, TestClient)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from _models import tiny_model
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from segzoo.inference import Predictor  # noqa: E402
from segzoo.serve.app import create_app  # noqa: E402

NORM = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    image = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue(), image


def test_json_and_png_answers_carry_the_labels_only_for_aux_models():
    model = tiny_model("unet", num_classes=2, aux_params={"classes": 3})
    body, image = _png(0)
    predictor = Predictor.from_module(model, NORM)
    with torch.no_grad():
        want = model(predictor.preprocess(image)[None])[1][0]
    with TestClient(create_app(predictor)) as client:
        assert client.get("/v1/model").json()["aux_classes"] == 3
        reply = client.post("/v1/predict", content=body, headers={"content-type": "image/png"},
                            params={"format": "json"})
        assert reply.status_code == 200, reply.text
        assert np.allclose(reply.json()["labels"], want.numpy(), atol=1e-4)
        png = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert np.allclose(json.loads(png.headers["x-segzoo-labels"]), want.numpy(), atol=1e-4)
    plain = Predictor.from_module(tiny_model("unet", num_classes=2), NORM)
    with TestClient(create_app(plain)) as client:
        assert "aux_classes" not in client.get("/v1/model").json()
        reply = client.post("/v1/predict", content=body, headers={"content-type": "image/png"},
                            params={"format": "json"})
        assert sorted(reply.json()) == ["class_pixels", "height", "mask_rle", "num_classes", "width"]
        png = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
        assert "x-segzoo-labels" not in png.headers
