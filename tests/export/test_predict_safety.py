"""segzoo predict as a careless or hostile user drives it: inputs are never written, outputs never clash,
every refusal is one line (exit 2) before anything is written, resource use is bounded."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _h4_helpers import assert_user_error
from PIL import Image

import segzoo.predict
from segzoo.predict import check_options, plan_outputs, predict_images

ROOT = Path(__file__).resolve().parents[2]


def _png(folder: Path, name: str, seed: int = 0, size=(40, 36)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = folder / name
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders (links not followed) -> sha256 of its bytes (or its link target)."""
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(*argv) -> tuple[int, str, str]:
    """``python -m segzoo.cli ...`` in a real process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "segzoo.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


# ---- case 1: inputs are never written --------------------------------------------------------

@pytest.mark.slow
def test_output_equal_to_input_with_force_never_touches_inputs(tmp_path, logdir, cli):
    _png(tmp_path / "in", "a.png", 1)
    _png(tmp_path / "in", "b.png", 2)
    before = _snapshot(tmp_path / "in")
    # as a user runs it (a real process), then variants in-process
    assert_user_error(_run("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "in",
                           "--force", "--no-progress"), "is the input", "a.png")
    assert _snapshot(tmp_path / "in") == before
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "in",
                          "--force", "--overlay", "--no-progress"), "is the input", "a.png")
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in" / "b.png", "--output", tmp_path / "in",
                          "--force", "--no-progress"), "is the input", "b.png")
    # the output folder given through a symlink to the input folder
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "alias",
                          "--force", "--no-progress"), "is the input")
    assert _snapshot(tmp_path / "in") == before


def test_outputs_linked_to_inputs_are_refused_even_with_force(tmp_path, logdir, cli):
    a = _png(tmp_path / "in", "a.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(tmp_path / "in")
    os.link(a, out / "a.png")  # a hard link: writing through it would change the input
    assert_user_error(cli("predict", logdir, "--input", a, "--output", out, "--force", "--no-progress"),
                      "is the input", str(a))
    os.unlink(out / "a.png")
    (out / "a.png").symlink_to(a)
    assert_user_error(cli("predict", logdir, "--input", a, "--output", out, "--force", "--no-progress"),
                      "is the input")
    assert _snapshot(tmp_path / "in") == before and (out / "a.png").is_symlink()


def test_masks_next_to_inputs_only_when_no_name_is_an_input(tmp_path, logdir, cli):
    folder = tmp_path / "photos"
    _png(folder, "x.jpg", 3)  # a PNG under a .jpg name is read by its content
    before = _snapshot(folder)
    code, out, err = cli("predict", logdir, "--input", folder, "--output", folder, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["x.jpg", "x.png"]
    mask = (folder / "x.png").read_bytes()
    # a second run now sees the mask as an input: both would write x.png, refused even with --force
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", folder, "--force", "--no-progress"),
                      "x.jpg and", "x.png would both write")
    assert (folder / "x.png").read_bytes() == mask and _snapshot(folder)[str(folder / "x.jpg")] == before[
        str(folder / "x.jpg")]


# ---- case 3: planned outputs never clash ------------------------------------------------------

@pytest.mark.slow
def test_overlay_names_clashing_with_inputs_are_refused_before_writing(tmp_path, logdir):
    _png(tmp_path / "in", "a.png", 1)
    _png(tmp_path / "in", "a_overlay.png", 2)
    before = _snapshot(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = _run("predict", logdir, "--input", tmp_path / "in", "--output", out, "--overlay",
                             "--no-progress")
    assert_user_error((code, stdout, err), str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "a_overlay.png"),
                      "would both write")
    assert not out.exists() and _snapshot(tmp_path / "in") == before


@pytest.mark.parametrize("names, fragment", [
    (["a.png", "a.jpg"], "would both write"),        # same stem, two extensions
    (["a.png", "a.TIF"], "would both write"),
    (["Cat.png", "cat.png"], "differ only in case"),  # one file on case-insensitive file systems
])
def test_two_inputs_for_one_output_name_are_refused(tmp_path, logdir, cli, names, fragment):
    for i, name in enumerate(names):
        _png(tmp_path / "in", name, i)
    before = _snapshot(tmp_path / "in")
    out = tmp_path / "out"
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress"),
                      fragment, names[0], names[1])
    assert not out.exists() and _snapshot(tmp_path / "in") == before


# ---- case 5: hostile files are one line -------------------------------------------------------

def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A 100 000 x 100 000 PNG header (10 Gpixels) with almost no data: never to be decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


@pytest.mark.slow
def test_decompression_bomb_is_one_line_naming_file_and_limit(tmp_path, logdir):
    _png(tmp_path / "in", "a.png")
    _bomb_png(tmp_path / "in" / "bomb.png")
    out = tmp_path / "out"
    start = time.monotonic()
    assert_user_error(_run("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress"),
                      "bomb.png", "100000x100000", "89478485", "--max-pixels")
    assert time.monotonic() - start < 60 and not out.exists()


def test_max_pixels_limits_legal_images_too(tmp_path, logdir, cli):
    _png(tmp_path / "in", "a.png", size=(40, 36))
    out = tmp_path / "out"
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--max-pixels", 1000,
                          "--no-progress"), "a.png", "36x40", "1000 pixels")
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--max-pixels", 0),
                      "max pixels")
    assert not out.exists()
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--max-pixels", 1440,
                       "--no-progress")
    assert code == 0, err


def test_odd_folder_entries(tmp_path, logdir, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out"
    # no images, only other things: the message says what is there
    (folder / "notes.txt").write_text("x")
    (folder / "x.png").mkdir()  # a folder named like an image
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", out), "has no", "notes.txt", "x.png/")
    # with an image: the others are listed as not read, after the summary
    _png(folder, "a.png")
    (folder / ".png").write_bytes(b"")  # a name that is only an extension: no stem, not an image
    code, stdout, err = cli("predict", logdir, "--input", folder, "--output", out, "--no-progress")
    assert code == 0, err
    assert [p.name for p in out.iterdir()] == ["a.png"]
    assert "not read: 3 entries" in stdout and ".png, notes.txt, x.png/" in stdout


@pytest.mark.parametrize("kind", ["loop", "dangling", "fifo", "garbage"])
def test_unreadable_entries_named_like_images(tmp_path, logdir, cli, kind):
    folder = tmp_path / "in"
    _png(folder, "a.png")
    bad = folder / "z.png"
    if kind == "loop":
        bad.symlink_to(bad)
    elif kind == "dangling":
        bad.symlink_to(tmp_path / "gone.png")
    elif kind == "fifo":
        os.mkfifo(bad)  # opening it for reading would wait forever
    else:
        bad.write_bytes(os.urandom(300))
    out = tmp_path / "out"
    expected = {"loop": "too many levels of symbolic links", "dangling": "broken symbolic link",
                "fifo": "not a regular file", "garbage": "not a recognized image"}[kind]
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", out, "--no-progress"),
                      str(bad), expected)
    assert not out.exists()
    # the same entry given alone
    assert_user_error(cli("predict", logdir, "--input", bad, "--output", out, "--no-progress"), "z.png")


def test_unreadable_file_permission(tmp_path, monkeypatch):
    path = _png(tmp_path, "secret.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(segzoo.data.folder.Image, "open", denied)  # root can read anything: simulate
    with pytest.raises(ValueError, match=r"cannot read image .*secret.png: permission denied$"):
        segzoo.data.read_image(path)


def test_odd_input_names_stay_inside_the_output_folder(tmp_path, logdir, cli):
    folder = tmp_path / "in"
    names = ["-dash.png", "sp ace.png", "ü.png", "new\nline.png", "..png", ".hidden.png", "x.y.png"]
    for i, name in enumerate(names):
        _png(folder, name, i)
    before = _snapshot(folder)
    out = tmp_path / "out"
    code, _, err = cli("predict", logdir, "--input", folder, "--output", out, "--overlay", "--no-progress")
    assert code == 0, err
    written = sorted(os.listdir(out))
    stems = [name[:-4] for name in names]
    assert written == sorted([f"{s}.png" for s in stems] + [f"{s}_overlay.png" for s in stems])
    assert sorted(os.listdir(tmp_path)) == ["in", "log", "out"]
    assert _snapshot(folder) == before
    # an error naming a file with a newline stays one line
    (folder / "new\nline.png").write_bytes(b"broken")
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", tmp_path / "o2", "--no-progress"),
                      "'", "new\\nline.png")


def test_output_names_over_the_length_limit_are_refused_up_front(tmp_path, logdir, cli):
    folder = tmp_path / "in"
    _png(folder, "a.png")
    _png(folder, "b" * 250 + ".png")  # its mask name fits, its overlay name does not
    out = tmp_path / "out"
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", out, "--overlay", "--no-progress"),
                      "bbbb", "over the file system's limit")
    assert not out.exists()
    out.mkdir()
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("predict", logdir, "--input", folder, "--output", tmp_path / "file" / "sub"),
                      "is not a folder")


# ---- case 6: bounded resource use -------------------------------------------------------------

@pytest.mark.parametrize("options, fragment", [
    (["--tile", 1], "tile size must be an integer >= 32"),
    (["--tile", 31], "tile size"),
    (["--tile", 32, "--tile-overlap", 17], "tile overlap must be an integer in [0, 16]"),
    (["--tile", 32, "--tile-overlap", -1], "tile overlap"),
    (["--batch-size", 10**9], "batch size must be an integer in [1, 1024]"),
    (["--batch-size", -3], "batch size"),
    (["--threshold", "nan"], "threshold"),
    (["--max-pixels", -1], "max pixels"),
    (["--output", ""], "output is an empty path"),  # "$OUT" unset: not the current folder
    (["--input", ""], "input is an empty path"),
])
def test_option_ranges_are_checked_up_front(tmp_path, logdir, cli, options, fragment):
    _png(tmp_path / "in", "a.png")
    start = time.monotonic()
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "out", *options),
                      fragment)
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()


def test_tile_below_the_model_size_multiple_is_refused(tmp_path):
    model = torch.nn.Conv2d(3, 2, 1)
    model.size_multiple = 64
    _png(tmp_path / "in", "a.png")
    with pytest.raises(ValueError, match="smaller than the model's size multiple 64"):
        predict_images(model, [tmp_path / "in" / "a.png"], tmp_path / "out", tile=32, progress=False)
    assert not (tmp_path / "out").exists()


def test_batches_hold_at_most_max_pixels(tmp_path):
    shapes = []
    model = torch.nn.Conv2d(3, 2, 1)
    model.register_forward_pre_hook(lambda mod, inputs: shapes.append(tuple(inputs[0].shape)))
    images = [_png(tmp_path / "in", f"{i}.png", i, size=(10, 10)) for i in range(5)]
    predict_images(model, images, tmp_path / "out", batch_size=4, max_pixels=250, progress=False)
    assert [s[0] for s in shapes] == [2, 2, 1]  # 2 x 100 pixels fit in 250, 3 x 100 do not
    assert check_options(tile=64) == 16 and check_options(tile=64, tile_overlap=32) == 32


# ---- case 7: another process, --force for that exact file --------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_a_file_created_meanwhile_is_never_replaced(tmp_path, logdir, cli, monkeypatch, force):
    _png(tmp_path / "in", "a.png")
    _png(tmp_path / "in", "b.png", 1)
    out = tmp_path / "out"
    real_check = segzoo.predict.check_images

    def other_process_writes(images, max_pixels):
        real_check(images, max_pixels)
        out.mkdir(exist_ok=True)
        (out / "b.png").write_bytes(b"theirs")  # appears after the plan, before our write

    monkeypatch.setattr(segzoo.predict, "check_images", other_process_writes)
    flags = ["--force"] if force else []
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress", *flags),
                      "b.png", "another process")
    assert (out / "b.png").read_bytes() == b"theirs"
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]  # no temporary file left


def test_force_replaces_existing_outputs_atomically(tmp_path, logdir, cli):
    _png(tmp_path / "in", "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"old mask")
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(b"not ours")
    (out / "a_overlay.png").symlink_to(elsewhere)  # replacing it replaces the link, not its target
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--overlay", "--force",
                       "--no-progress")
    assert code == 0, err
    assert elsewhere.read_bytes() == b"not ours" and not (out / "a_overlay.png").is_symlink()
    with Image.open(out / "a.png") as img:
        assert img.size == (36, 40)
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.png"]


def test_plan_outputs_refuses_a_folder_where_a_mask_goes(tmp_path):
    a = _png(tmp_path / "in", "a.png")
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="a.png is a folder"):
        plan_outputs([a], tmp_path / "out", force=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 KiB tmpfs (we are root in CI); skipped where mounting is not allowed."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_is_one_line_and_leaves_only_whole_files(tmp_path, logdir, cli, small_tmpfs):
    for i in range(4):
        _png(tmp_path / "in", f"{i}.png", i, size=(200, 200))
    before = _snapshot(tmp_path / "in")
    out = small_tmpfs / "out"
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--overlay",
                          "--no-progress"), "cannot write", "no space left on device")
    assert _snapshot(tmp_path / "in") == before
    for path in out.iterdir():  # no temporary file; what is there is a whole PNG
        assert not path.name.startswith(".")
        with Image.open(path) as img:
            img.load()
