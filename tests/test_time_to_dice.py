"""benchmarks/time_to_dice.py (issue 23, point 6): the protocol's pieces, and a smoke run of ``--quick``."""

from __future__ import annotations

import json

import pytest

ttd = pytest.importorskip("benchmarks.time_to_dice", reason="run from the repository root")


def test_time_to_target_and_table():
    curve = [(10.0, 0.5), (20.0, 0.951), (30.0, 0.97)]
    assert ttd.time_to(curve, 0.95) == 20.0 and ttd.time_to(curve, 0.99) is None
    summary = {name: {"median_time_to_target_s": t, "median_final_dice": 0.97, "median_epoch_s": 9.0, "reached": "2/2"}
               for name, t in (("segzoo", 40.0), ("smp", 100.0), ("smp-tuned", None))}
    text = ttd.table(summary, 0.95)
    assert "| segzoo | 40.0 | 2.50x | - |" in text and "| smp-tuned | not reached | - | - |" in text
    summary["smp-tuned"]["median_time_to_target_s"] = 60.0
    assert "| segzoo | 40.0 | 2.50x | 1.50x |" in ttd.table(summary, 0.95)


def test_segzoo_fp32_contender_forces_fp32_and_order_rotates(monkeypatch):
    calls = []

    def fake_segzoo(model, data, args, seed, **settings):
        calls.append(("segzoo", settings))
        return [(1.0, 0.96)], {"precision": settings.get("precision", "auto")}

    def fake_plain(model, data, args, seed, tuned):
        calls.append(("smp", {"tuned": tuned}))
        return [(2.0, 0.9)]

    monkeypatch.setattr(ttd, "segzoo_run", fake_segzoo)
    monkeypatch.setattr(ttd, "plain_loop", fake_plain)
    monkeypatch.setattr(ttd, "build", lambda contender, arch: None)
    monkeypatch.setattr(ttd, "make_data", lambda *a: {})
    args = ttd.argparse.Namespace(n_train=1, n_valid=1, size=32, repeats=2, seed=0, arch="resnet18", target=0.95,
                                  contenders=["segzoo-fp32", "smp"])
    result = ttd.run_all(args, log=lambda line: None)
    assert [r["contender"] for r in result["runs"]] == ["segzoo-fp32", "smp", "smp", "segzoo-fp32"]
    assert calls[0] == ("segzoo", {"precision": "fp32"}) and calls[1] == ("smp", {"tuned": False})
    assert set(result["summary"]) == {"segzoo-fp32", "smp"}
    assert result["summary"]["smp"]["median_time_to_target_s"] is None


def test_same_data_and_batch_order_for_every_contender():
    data = ttd.make_data(4, 2, 32)
    assert data["x_train"].shape == (4, 3, 32, 32) and set(data["y_train"].unique().tolist()) <= {0.0, 1.0}
    first = [y for _, y in ttd.loaders(data, 2, seed=3)["train"]]
    again = [y for _, y in ttd.loaders(data, 2, seed=3)["train"]]
    assert all((a == b).all() for a, b in zip(first, again))


def test_refuses_to_replace_an_earlier_result(tmp_path, capsys):
    (tmp_path / "time_to_dice.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        ttd.main(["--quick", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert (tmp_path / "time_to_dice.json").read_text() == "{}"
    with pytest.raises(SystemExit):
        ttd.main(["--size", "100", "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_quick_smoke_run(tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    assert ttd.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "time_to_dice.json").read_text())
    assert {r["contender"] for r in result["runs"]} == set(ttd.CONTENDERS)
    assert all(0.0 <= r["final_dice"] <= 1.0 and len(r["curve"]) == 1 for r in result["runs"])
    segzoo = next(r for r in result["runs"] if r["contender"] == "segzoo")
    assert set(segzoo["chosen"]) == {"threads", "precision", "layout", "compile"}
    assert result["environment"]["cpu"] and "load_average_start" in result["environment"]
    assert (tmp_path / "time_to_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| smp |" in capsys.readouterr().out
