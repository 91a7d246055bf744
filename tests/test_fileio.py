"""segzoo.fileio: atomic, no-replace writes; disk full and other OS errors as one line."""

import os
import threading

import pytest
import torch

from segzoo.errors import WriteError, short_repr
from segzoo.fileio import atomic_write, check_not_input, write_bytes_atomic, write_json_atomic


def test_disk_full_is_one_line_and_leaves_nothing(tiny_fs):
    path = tiny_fs / "ck.pth"
    with pytest.raises(WriteError, match="no space left on device") as info:
        atomic_write(path, lambda f: torch.save({"w": torch.randn(100_000)}, f))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert info.value.errno == 28
    assert os.listdir(tiny_fs) == []


def test_disk_full_keeps_the_previous_file(tiny_fs):
    path = tiny_fs / "m.json"
    write_json_atomic({"epoch": 1}, path)
    with pytest.raises(WriteError):
        write_bytes_atomic(path, b"x" * 200_000, overwrite=True)
    assert path.read_text() == '{\n  "epoch": 1\n}'
    assert os.listdir(tiny_fs) == ["m.json"]


def test_existing_file_refused_unless_overwrite(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic([1], path)
    with pytest.raises(FileExistsError, match="--force"):
        write_json_atomic([2], path)
    assert path.read_text() == "[\n  1\n]"
    write_json_atomic([2], path, overwrite=True)
    assert path.read_text() == "[\n  2\n]"


def test_each_published_file_is_its_own_inode(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_bytes_atomic(a, b"1")
    write_bytes_atomic(b, b"1")
    assert os.stat(a).st_nlink == 1 and os.stat(b).st_nlink == 1


def test_concurrent_writers_one_wins_the_other_fails(tmp_path):
    path = tmp_path / "out.bin"
    barrier = threading.Barrier(2)
    results = []

    def writer(data):
        def write(f):
            f.write(data)
            barrier.wait()  # both temp files are written before either publishes
        try:
            atomic_write(path, write)
            results.append(data)
        except FileExistsError:
            results.append("lost")

    threads = [threading.Thread(target=writer, args=(d,)) for d in (b"A" * 10, b"B" * 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results)).count("lost") == 1
    winner = next(r for r in results if r != "lost")
    assert path.read_bytes() == winner
    assert os.listdir(tmp_path) == ["out.bin"]


def test_name_too_long_and_folder_destination(tmp_path):
    with pytest.raises(WriteError, match="file name too long"):
        write_bytes_atomic(tmp_path / ("x" * 300), b"1")
    with pytest.raises(IsADirectoryError):
        write_bytes_atomic(tmp_path, b"1")


def test_check_not_input(tmp_path):
    src = tmp_path / "img.png"
    src.write_bytes(b"1")
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with pytest.raises(ValueError, match="never overwritten"):
        check_not_input(link, [src])
    check_not_input(tmp_path / "other.png", [src])


def test_short_repr_is_bounded():
    assert len(short_repr("x" * 10_000)) <= 80
    assert short_repr(["a"] * 10**6) == "list of 1000000 items"
    assert short_repr(3) == "3"


def test_forced_overwrite_keeps_a_file_another_process_wrote_meanwhile(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def write(f):  # another process replaces the file while ours is being written
        f.write(b"ours")
        other = tmp_path / "other"
        other.write_bytes(b"theirs")
        os.replace(other, path)

    with pytest.raises(FileExistsError, match="another process meanwhile"):
        atomic_write(path, write, overwrite=True)
    assert path.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.bin"]
    # and with overwrite, a file that did not exist at the start and appeared meanwhile is kept too
    new = tmp_path / "new.bin"
    with pytest.raises(FileExistsError, match="another process meanwhile"):
        atomic_write(new, lambda f: (f.write(b"ours"), new.write_bytes(b"theirs")), overwrite=True)
    assert new.read_bytes() == b"theirs"


def test_published_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "a", b"1")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match="a parent is not a folder"):
        write_bytes_atomic(tmp_path / "f" / "out", b"1")  # mkdir would say "File exists"
    assert (tmp_path / "f").read_text() == "x"


def test_sync_dir_false_leaves_the_folder_sync_to_the_caller(tmp_path, monkeypatch):
    import stat

    from segzoo import fileio

    synced = []
    real = os.fsync

    def record(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_bytes_atomic(tmp_path / "a.bin", b"a")
    assert synced == ["file", "dir"]
    synced.clear()
    write_bytes_atomic(tmp_path / "b.bin", b"b", sync_dir=False)
    write_json_atomic({"c": 1}, tmp_path / "c.json", sync_dir=False)
    assert synced == ["file", "file"]  # data always; the names wait for the caller's folder sync
    fileio.fsync_dir(tmp_path)
    assert synced == ["file", "file", "dir"]
    assert (tmp_path / "b.bin").read_bytes() == b"b"


@pytest.mark.parametrize("kind,reason", [
    ("folder", "it is a folder"), ("fifo", "not a regular file"),
    ("dangling", "broken symbolic link to a missing file"), ("loop", "too many levels of symbolic links"),
])
def test_checkpoints_and_images_refuse_non_files_alike(tmp_path, kind, reason):
    """One stat check (segzoo.fileio.stat_input_file) for every input file: same reasons, each naming the file."""
    from segzoo.checkpoint import load_checkpoint
    from segzoo.data.folder import DataError, read_image
    from segzoo.errors import CheckpointError

    path = tmp_path / "in"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "missing")
    else:
        path.symlink_to(tmp_path / "in")
    with pytest.raises(CheckpointError) as ck:
        load_checkpoint(path)
    with pytest.raises(DataError) as img:
        read_image(path)
    assert str(ck.value).startswith(f"cannot read checkpoint {path}: {reason}"), str(ck.value)
    assert str(img.value).startswith(f"cannot read image {path}: {reason}"), str(img.value)
    with pytest.raises(FileNotFoundError, match=f"^no such checkpoint: {tmp_path / 'none'}$"):
        load_checkpoint(tmp_path / "none")
