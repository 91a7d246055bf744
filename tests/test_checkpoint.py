import os
import pickle

import pytest
import torch

from segzoo.checkpoint import clean_state_dict, load_checkpoint, resolve_checkpoint, save_checkpoint
from segzoo.encoders.weights import check_weights, load_into
from segzoo.errors import CheckpointError, WriteError


def test_round_trip_and_no_temp_files(tmp_path):
    path = save_checkpoint({"model_state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "c" / "best.pth")
    ck = load_checkpoint(path)
    assert ck["epoch"] == 3 and torch.equal(ck["model_state_dict"]["w"], torch.ones(2))
    assert os.listdir(path.parent) == ["best.pth"]


def test_failed_write_keeps_previous_file(tmp_path):
    path = save_checkpoint({"model_state_dict": {"w": torch.ones(2)}}, tmp_path / "best.pth")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model_state_dict": {}, "bad": Unsaveable()}, path)
    assert torch.equal(load_checkpoint(path)["model_state_dict"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["best.pth"]


def test_truncated_file(tmp_path):
    path = save_checkpoint({"model_state_dict": {"w": torch.rand(100)}}, tmp_path / "x.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope.pth")


class _Payload:
    """Unpickling this would create a file: it must never run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "x": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "foreign.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_dict_without_model_state(tmp_path):
    path = tmp_path / "f.pth"
    torch.save({"hello": 1}, path)
    with pytest.raises(CheckpointError, match="model_state_dict"):
        load_checkpoint(path)


def test_bare_state_dict_is_wrapped(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save({"w": torch.zeros(1)}, path)
    assert set(load_checkpoint(path)) == {"model_state_dict"}


def test_clean_state_dict_strips_wrappers():
    sd = {"module._orig_mod.encoder.w": 1, "_orig_mod.head.b": 2, "decoder.x": 3}
    assert clean_state_dict(sd) == {"encoder.w": 1, "head.b": 2, "decoder.x": 3}


def test_resolve_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("best", "last", "stage1.3"):
        save_checkpoint({"model_state_dict": {}}, folder / f"{name}.pth")
    assert resolve_checkpoint(tmp_path) == folder / "best.pth"
    assert resolve_checkpoint(tmp_path, "stage1.3") == folder / "stage1.3.pth"
    assert resolve_checkpoint(folder / "last.pth") == folder / "last.pth"
    with pytest.raises(FileNotFoundError, match="available: best, last, stage1.3"):
        resolve_checkpoint(tmp_path, "stage2.1")
    with pytest.raises(FileNotFoundError, match="no such log directory"):
        resolve_checkpoint(tmp_path / "nothing")


def test_disk_full_keeps_the_previous_checkpoint(tiny_fs):
    path = save_checkpoint({"model_state_dict": {"w": torch.ones(2)}}, tiny_fs / "last.pth")
    with pytest.raises(WriteError, match=f"cannot write {path}: no space left on device"):
        save_checkpoint({"model_state_dict": {"w": torch.randn(100_000)}}, path)
    assert torch.equal(load_checkpoint(path)["model_state_dict"]["w"], torch.ones(2))
    assert os.listdir(tiny_fs) == ["last.pth"]


@pytest.mark.parametrize("src, dst, ok", [
    (torch.float16, torch.float32, True), (torch.bfloat16, torch.float32, True), (torch.int32, torch.int64, True),
    (torch.float32, torch.float32, True), (torch.int8, torch.float32, False), (torch.float64, torch.float32, False),
    (torch.float32, torch.float16, False), (torch.float32, torch.int64, False), (torch.bool, torch.int64, False),
    (torch.uint8, torch.float32, False), (torch.complex64, torch.float32, False)])
def test_only_lossless_dtype_casts_are_loaded(src, dst, ok):
    own = {"w": torch.zeros(3, dtype=dst)}
    weights = {"w": torch.ones(3, dtype=src)}
    if ok:
        check_weights(own, weights, "the model")
    else:
        with pytest.raises(CheckpointError, match=f"'w' is {str(src)[6:]} in the checkpoint but {str(dst)[6:]}"):
            check_weights(own, weights, "the model")


def test_resume_path_refuses_int8_weights():
    # load_into is what resuming and state_dict= use: an int8 checkpoint would otherwise be cast silently
    model = torch.nn.Conv2d(3, 2, 1)
    weights = {k: (v * 100).to(torch.int8) for k, v in model.state_dict().items()}
    before = model.weight.detach().clone()
    with pytest.raises(CheckpointError, match="int8 in the checkpoint but float32"):
        load_into(model, weights, "the model")
    assert torch.equal(model.weight, before)


def test_upernet_checkpoint_from_before_level_fusion_loads_as_concat(tmp_path):
    """An UPerNet checkpoint written when the concat fusion was the default (its spec has no 'fuse') still loads."""
    import segzoo
    from segzoo.models import create_model, get_model_spec

    kwargs = dict(num_channels=4, num_blocks=3)
    old = create_model("upernet", **kwargs, decoder_params={"channels": 8, "fuse": "concat"}).eval()
    spec = {"name": "upernet", "kwargs": {**get_model_spec(old)["kwargs"], "decoder_params": {"channels": 8}}}
    path = save_checkpoint({"model_state_dict": old.state_dict(), "model_spec": spec}, tmp_path / "best.pth")
    model = segzoo.load_model(path)
    assert model.decoder.fuse_mode == "concat"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), old(x))
    # a checkpoint of the new default is untouched
    new = create_model("upernet", **kwargs, decoder_params={"channels": 8}).eval()
    path = save_checkpoint({"model_state_dict": new.state_dict(), "model_spec": get_model_spec(new)}, tmp_path / "n.pth")
    assert segzoo.load_model(path).decoder.fuse_mode == "levels"


def _flip(path, record, count=64):
    """Invert ``count`` bytes in the middle of zip record ``record`` (e.g. ``data/0``, ``data.pkl``) of ``path``."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/" + record))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + max(0, info.file_size // 2 - count // 2)
    for i in range(start, start + min(count, info.file_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("record", ["data/0", "data.pkl"])
def test_flipped_bytes_are_refused_in_one_line_naming_the_file(tmp_path, record):
    path = save_checkpoint({"model_state_dict": {"w": torch.rand(1000)}, "epoch": 3, "note": "x" * 100},
                           tmp_path / "last_full.pth")
    _flip(path, record)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "is damaged" in message and record in message


def test_checksums_are_recorded_even_when_torch_is_told_not_to(tmp_path):
    import zipfile

    from segzoo.checkpoint import checkpoint_bytes

    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        path = tmp_path / "c.pth"
        path.write_bytes(checkpoint_bytes({"model_state_dict": {"w": torch.rand(100)}}))
        torch.save({"model_state_dict": {"w": torch.rand(100)}}, tmp_path / "unchecked.pth")
    finally:
        torch.serialization.set_crc32_options(before)
    with zipfile.ZipFile(path) as zf:
        assert all(info.CRC for info in zf.infolist() if info.file_size)
    _flip(path, "data/0")
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)
    # files without checksums (torch's turned off, the legacy non-zip format) still load, unchecked
    assert set(load_checkpoint(tmp_path / "unchecked.pth")) == {"model_state_dict"}
    torch.save({"model_state_dict": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)
    assert load_checkpoint(tmp_path / "legacy.pth")["epoch"] == 1


def test_a_damaged_checkpoint_is_one_line_from_the_cli(tmp_path, capsys):
    import segzoo
    from segzoo.cli import main
    from segzoo.models.registry import get_model_spec

    model = segzoo.create_model("unet", num_channels=4, num_blocks=2)
    path = save_checkpoint({"model_state_dict": model.state_dict(), "model_spec": get_model_spec(model)},
                           tmp_path / "run" / "checkpoints" / "best.pth")
    _flip(path, "data/0")
    assert main(["trace", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "is damaged" in err, err
    assert not (tmp_path / "run" / "trace").exists()


def test_crafted_zip_records_are_one_line_errors(tmp_path):
    """Checking the records must not open a new way to a traceback: an entry flagged encrypted, a bad deflate stream."""
    import zipfile

    src = save_checkpoint({"model_state_dict": {"w": torch.rand(1000)}}, tmp_path / "src.pth")
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        first = zf.infolist()[0]
    data[first.header_offset + 6] |= 1  # the "encrypted" flag, in the local header and the central directory
    data[data.find(b"PK\x01\x02") + 8] |= 1
    (tmp_path / "encrypted.pth").write_bytes(bytes(data))
    with zipfile.ZipFile(src) as zf, zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as out:
        for info in zf.infolist():
            out.writestr(info.filename, zf.read(info))
    assert set(load_checkpoint(tmp_path / "deflated.pth")) == {"model_state_dict"}  # compressed but sound: loads
    data = bytearray((tmp_path / "deflated.pth").read_bytes())
    with zipfile.ZipFile(tmp_path / "deflated.pth") as zf:
        big = max(zf.infolist(), key=lambda i: i.compress_size)
    start = big.header_offset + 30 + len(big.filename) + 20
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    (tmp_path / "deflated.pth").write_bytes(bytes(data))
    for name in ("encrypted.pth", "deflated.pth"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_the_file_verified_is_the_file_loaded_when_a_writer_replaces_it_meanwhile(tmp_path, monkeypatch):
    import segzoo.checkpoint as ckpt

    path = save_checkpoint({"model_state_dict": {"w": torch.zeros(3)}, "epoch": 1}, tmp_path / "best.pth")
    newer = save_checkpoint({"model_state_dict": {"w": torch.ones(3)}, "epoch": 2}, tmp_path / "new.pth")
    real = ckpt._check_archive

    def check_then_replace(*args):  # a trainer publishes a new best.pth right after the checksums were verified
        real(*args)
        os.replace(newer, path)

    monkeypatch.setattr(ckpt, "_check_archive", check_then_replace)
    assert load_checkpoint(path)["epoch"] == 1  # what was verified, not a file that was never checked
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned_by_checkpoint",))


def test_a_file_that_is_no_pickle_or_a_raw_pickle_is_one_line_without_torchs_notes(tmp_path, monkeypatch, recwarn):
    """A text file was reported as holding 'objects other than tensors' with torch's note about its 2.6 default;
    a raw pickle (protocol 4, not a torch file) also printed torch's pickle-protocol warning."""
    import pickle

    from segzoo.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.pth").write_text("garbage\n")
    with pytest.raises(CheckpointError, match=r"text\.pth: truncated or not a torch file \(Unsupported operand") as info:
        load_checkpoint(tmp_path / "text.pth")
    assert "2.6" not in str(info.value)
    with open(tmp_path / "raw.pth", "wb") as f:
        pickle.dump({"model_state_dict": _System()}, f, protocol=4)
    with pytest.raises(CheckpointError, match=r"raw\.pth") as info:
        load_checkpoint(tmp_path / "raw.pth")
    assert "\n" not in str(info.value) and not [w for w in recwarn if "pickle protocol" in str(w.message)]
    torch.save({"model_state_dict": {}, "x": _System()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refusing to load .*unsupported GLOBAL posix\.system") as info:
        load_checkpoint(tmp_path / "evil.pth")
    assert "2.6" not in str(info.value) and not (tmp_path / "pwned_by_checkpoint").exists()
