"""The memory budget of segzoo serve (segzoo.serve.budget) and the app's JSON answer to its own bugs, in process."""

from __future__ import annotations

import numpy as np
import pytest
from _models import tiny_model
from _serving import png_bytes, random_image
from fastapi.testclient import TestClient

from segzoo.inference import Predictor
from segzoo.serve import app as serve_app
from segzoo.serve import budget as M


def test_padded_pixels_and_request_bytes():
    assert M.padded(1, 32, 64) == 64 and M.padded(65, 32, 1) == 96
    assert M.model_pixels(1, 1000, 32, 1) == 32 * 1024  # a 1 x N image is run 32 rows high
    assert M.model_pixels(5000, 5000, 32, 1, tile=256, tiles_per_pass=4) == 4 * 256 * 256
    small = M.request_bytes(10, 10, "RGB", 100, 50, num_classes=3)
    assert small == 100 * M.REQUEST_BYTES_PER_PIXEL + 100 * 50
    assert M.request_bytes(10, 10, "I;16", 100, 50, 3) > small  # decoded as float32
    assert M.request_bytes(10, 10, "RGB", 100, 50, 3, rich_answer=True) > small
    assert M.model_bytes_per_pixel(None, 3, 2) == 64 * 5 and M.model_bytes_per_pixel(0.0, 3, 2) == 20
    assert M.model_bytes_per_pixel(100.0, 3, 2) == 125 + 12


def test_the_budget_is_never_exceeded_and_is_given_back():
    budget = M.MemoryBudget(1000)
    with budget.hold() as first:
        first.take(600)
        with pytest.raises(M.BudgetFullError, match="retry later"):
            with budget.hold() as second:
                second.take(300)
                assert budget.used == 900
                second.take(200)  # would make 1100
        assert budget.used == 600  # the failed request gave back its 300
    assert budget.used == 0
    with budget.hold() as alone, pytest.raises(M.OverBudgetError, match="--max-memory"):
        alone.take(1001)  # can never fit: 413, not 503 + retry


def test_a_peak_that_did_not_grow_is_no_measurement(monkeypatch):
    """No growth (the run reused memory the process held) is None, not 0.0 (the peak read from a fake status)."""
    monkeypatch.setattr(M, "_status_kib", lambda field: 1000)  # VmRSS before == VmHWM after
    assert M.measure_bytes_per_pixel(lambda: None, 1024 * 1024) is None


def test_default_budget_and_measurement():
    assert M.default_budget(8 * 1024**3) == 4 * 1024**3
    assert M.default_budget(100 * M.MIB) == 256 * M.MIB
    measured = M.measure_bytes_per_pixel(lambda: np.ones(64 * M.MIB, np.uint8).sum(), 1024 * 1024)
    if measured is None:
        pytest.skip("no /proc/self/clear_refs here, or the process reused memory it held")
    assert 40 <= measured <= 200  # 64 MiB touched for one Mpixel


def test_a_server_bug_is_a_json_500(monkeypatch):
    """500 answers were Starlette's plain text 'Internal Server Error'."""
    predictor = Predictor.from_module(tiny_model(num_classes=3))
    app = serve_app.create_app(predictor, serve_app.ServeSettings(max_memory=256 * M.MIB, bytes_per_pixel=64))

    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(serve_app, "_answer", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.post("/v1/predict", content=png_bytes(random_image(32, 32, 0)),
                            headers={"Content-Type": "image/png"})
        assert reply.status_code == 500
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"error": "internal server error (the server log has the details)"}
        assert client.get("/health").json()["memory_reserved"] == 0  # the failed request gave its memory back


@pytest.mark.export
@pytest.mark.filterwarnings("ignore:No complete tensor found")
def test_a_size_a_fixed_size_program_cannot_take_is_422_from_the_header(tmp_path):
    """A .pt2 exported for one size answered other sizes with a 500 from inside the batch."""
    import torch

    from segzoo.inference import load_predictor

    model = tiny_model(num_classes=3).eval()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 64, 64),)), str(path))
    predictor = load_predictor(path, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    app = serve_app.create_app(predictor, serve_app.ServeSettings(max_memory=256 * M.MIB, bytes_per_pixel=64))
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/predict", content=png_bytes(random_image(64, 64, 0)), headers={"Content-Type": "image/png"})
        assert ok.status_code == 200, ok.text
        bad = client.post("/v1/predict", content=png_bytes(random_image(48, 80, 1)),
                          headers={"Content-Type": "image/png"})
        assert bad.status_code == 422 and "H, W exactly 64" in bad.json()["error"], bad.text
        assert "\n" not in bad.json()["error"] and client.get("/health").json()["memory_reserved"] == 0
