"""How image and mask files of every Pillow mode are read (training and predict share read_image),
and errors that name the file, also through DataLoader worker processes."""

from __future__ import annotations

import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segzoo.data import DataError, SegmentationFolder, normalize, read_image
from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD


def _rgb(h=12, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array_or_image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    img.save(path, **kwargs)
    return path


def _png_raw(path, w, h, colour_type, bit_depth, rows: bytes):
    """Write a PNG by hand (Pillow cannot write 16-bit colour)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


# ---- images ------------------------------------------------------------------------------------

def test_16_bit_grey_keeps_its_levels_and_the_8_bit_range(tmp_path):
    grey8 = np.arange(120, dtype=np.uint8).reshape(12, 10) * 2
    grey16 = grey8.astype(np.uint16) * 257  # the same picture at 16 bits (x * 65535 / 255)
    grey16[0, 0] = 1  # a level no 8-bit file has
    for suffix in (".png", ".tif"):
        path = _save(tmp_path / f"g16{suffix}", grey16)
        with Image.open(path) as img:
            assert img.mode == "I;16"
        image = read_image(path)
        assert image.dtype == np.float32 and image.shape == (12, 10, 3)
        np.testing.assert_allclose(image[..., 1], grey16 / 65535, rtol=1e-6)
        assert len(np.unique(image)) == len(np.unique(grey16))  # not clipped to 0/255 levels
        # the model sees the same input as from the 8-bit file of the same picture
        eight = read_image(_save(tmp_path / "g8.png", grey8))
        same = normalize(image, IMAGENET_MEAN, IMAGENET_STD), normalize(eight, IMAGENET_MEAN, IMAGENET_STD)
        assert torch.allclose(same[0][:, 1:], same[1][:, 1:], atol=1e-5)


def test_integer_and_float_images(tmp_path):
    ok = np.full((4, 5), 40000, np.int32)
    image = read_image(_save(tmp_path / "i.tif", Image.fromarray(ok, mode="I")))
    assert np.allclose(image, 40000 / 65535)
    with pytest.raises(DataError, match=r"i32.tif is 32-bit integer with values in \[70000, 70000\]"):
        read_image(_save(tmp_path / "i32.tif", Image.fromarray(np.full((4, 5), 70000, np.int32), mode="I")))
    unit = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "f.tif", Image.fromarray(unit)))[..., 2], unit)
    with pytest.raises(DataError, match=r"f255.tif is 32-bit float with values in \[0, 255\]; .* \[0, 1\]"):
        read_image(_save(tmp_path / "f255.tif", Image.fromarray(unit * 255)))
    nan = unit.copy()
    nan[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        read_image(_save(tmp_path / "nan.tif", Image.fromarray(nan)))


def test_8_bit_modes_become_rgb(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 7, np.uint8)], -1)  # almost transparent: alpha dropped
    np.testing.assert_array_equal(read_image(_save(tmp_path / "a.png", rgba)), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(read_image(_save(tmp_path / "l.png", grey)), np.repeat(grey[..., None], 3, -1))
    la = Image.fromarray(np.stack([grey, grey], -1), mode="LA")
    np.testing.assert_array_equal(read_image(_save(tmp_path / "la.png", la)), np.repeat(grey[..., None], 3, -1))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "p.png", pal)), np.asarray(pal.convert("RGB")))
    with warnings.catch_warnings():  # a palette with transparency: no Pillow warning on stderr
        warnings.simplefilter("error")
        pal.save(tmp_path / "pt.png", transparency=bytes(range(0, 256, 16)))
        np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), np.asarray(pal.convert("RGB")))
    bits = Image.fromarray(grey > 128)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "1.png", bits))[..., 0], np.where(grey > 128, 255, 0))
    cmyk = read_image(_save(tmp_path / "c.jpg", Image.new("CMYK", (10, 12), (0, 255, 0, 0)), quality=100))
    assert cmyk.dtype == np.uint8 and abs(cmyk[0, 0].astype(int) - [255, 0, 255]).max() <= 2
    # 16-bit colour PNGs: Pillow decodes them at 8 bits (the high byte), not clipped
    rows = b"".join(b"\0" + np.full((10, 3), 0x8000 + 0x1234 * r, ">u2").tobytes() for r in range(4))
    wide = read_image(_png_raw(tmp_path / "rgb48.png", 10, 4, 2, 16, rows))
    assert wide.dtype == np.uint8 and wide[:, 0, 0].tolist() == [0x80, 0x92, 0xA4, 0xB6]


def test_multi_frame_files_are_refused_except_mpo(tmp_path):
    frames = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="anim.png has 3 frames"):
        read_image(tmp_path / "anim.png")
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="pages.tif has 3 frames"):
        read_image(tmp_path / "pages.tif")
    flat = [Image.new("RGB", (10, 12), (v, 255 - v, 128)) for v in (30, 120, 220)]  # JPEG keeps flat colours
    flat[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=flat[1:], quality=95)
    main = read_image(tmp_path / "phone.jpg")
    assert main.shape == (12, 10, 3) and np.abs(main.astype(int) - [30, 225, 128]).max() <= 3


def test_unreadable_and_huge_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="dir.png: it is a folder"):
        read_image(tmp_path / "dir.png")
    buf = _save(tmp_path / "t.png", _rgb(64, 64)).read_bytes()
    (tmp_path / "t.png").write_bytes(buf[: len(buf) // 2])
    with pytest.raises(DataError, match="cannot read image .*t.png: "):
        read_image(tmp_path / "t.png")
    big = _png_raw(tmp_path / "bomb.png", 12_000, 12_000, 0, 1, b"\0" * 10)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=r"bomb.png is 12000x12000 \(144.0 Mpixels\), over the limit of 89478485"):
        read_image(big)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's own limit is left as it was
    with pytest.raises(DataError, match="cannot read image .*bomb.png: "):  # allowed, then found truncated
        read_image(big, max_pixels=12_000 ** 2)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit
    with pytest.raises(DataError, match="over the limit of 100 pixels"):
        read_image(_save(tmp_path / "ok.png", _rgb()), max_pixels=100)
    with pytest.raises(ValueError, match="'L'"):
        read_image(tmp_path / "ok.png", mode="L")


# ---- masks -------------------------------------------------------------------------------------

def test_masks_keep_their_stored_class_ids(tmp_path):
    ids = (np.arange(120).reshape(12, 10) * 37 % 1000).astype(np.uint16)  # ids beyond 255
    mask = read_image(_save(tmp_path / "m16.png", ids), mode="mask")
    np.testing.assert_array_equal(mask, ids)
    small = (ids % 5).astype(np.uint8)
    pal = Image.fromarray(small, mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 200, 200, 200])  # colours must not matter
    np.testing.assert_array_equal(read_image(_save(tmp_path / "p.png", pal), mode="mask"), small)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "b.png", Image.fromarray(small > 2)), mode="mask"),
                                  (small > 2).astype(np.uint8))
    grey_rgb = np.repeat(small[..., None] * 40, 3, -1)  # an L mask saved as RGB: lossless, accepted
    np.testing.assert_array_equal(read_image(_save(tmp_path / "g.png", grey_rgb), mode="mask"), small * 40)
    with pytest.raises(DataError, match="colour.png is a colour .RGB. image; masks must be single-channel"):
        read_image(_save(tmp_path / "colour.png", _rgb()), mode="mask")
    la = Image.fromarray(np.stack([small, small], -1), mode="LA")
    with pytest.raises(DataError, match="la.png has mode LA; masks must be"):
        read_image(_save(tmp_path / "la.png", la), mode="mask")
    f = Image.fromarray(small.astype(np.float32))
    with pytest.raises(DataError, match="has mode F"):
        read_image(_save(tmp_path / "f.tif", f), mode="mask")


# ---- the folder dataset ------------------------------------------------------------------------

def _pairs(root, n=3, num_classes=2, image_dtype=np.uint8):
    rng = np.random.default_rng(1)
    for i in range(n):
        image = _rgb(16, 16, i)
        if image_dtype == np.uint16:
            _save(root / "img" / f"s{i}.png", image[..., 0].astype(np.uint16) * 257)
        else:
            _save(root / "img" / f"s{i}.png", image)
        _save(root / "msk" / f"s{i}.png", rng.integers(0, num_classes, (16, 16)).astype(np.uint8))
    return root / "img", root / "msk"


def test_folder_trains_on_16_bit_images_like_8_bit_ones(tmp_path):
    img16, msk = _pairs(tmp_path / "16", image_dtype=np.uint16)
    img8, _ = _pairs(tmp_path / "8")
    for i in range(3):  # the grey 8-bit version of the same picture
        grey = np.asarray(Image.open(img8 / f"s{i}.png"))[..., 0]
        _save(img8 / f"s{i}.png", np.repeat(grey[..., None], 3, -1))
    a = SegmentationFolder(img16, msk, num_classes=2)[1]["features"]
    b = SegmentationFolder(img8, msk, num_classes=2)[1]["features"]
    assert torch.allclose(a, b, atol=1e-5)
    assert a.std() > 0.5  # not flattened


def test_folder_checks_headers_when_built(tmp_path):
    images, masks = _pairs(tmp_path)
    _save(masks / "s1.png", np.zeros((8, 16), np.uint8))
    with pytest.raises(DataError, match=r"mask .*s1.png is 16x8 but image .*s1.png is 16x16"):
        SegmentationFolder(images, masks, num_classes=2)
    _save(masks / "s1.png", np.zeros((16, 16), np.uint8))
    (images / "s2.png").write_bytes(b"GIF89a not really")
    with pytest.raises(DataError, match=r"cannot read image .*s2.png"):
        SegmentationFolder(images, masks, num_classes=2)
    _save(images / "s2.png", _rgb(16, 16))
    _save(images / "s2.jpg", _rgb(16, 16))
    with pytest.raises(DataError, match=r"s2.jpg and .*s2.png have the same name 's2'"):
        SegmentationFolder(images, masks, num_classes=2)
    (images / "s2.jpg").unlink()
    with pytest.raises(DataError, match="over the limit of 100 pixels"):
        SegmentationFolder(images, masks, num_classes=2, max_pixels=100)
    with pytest.raises(ValueError, match="max_pixels"):
        SegmentationFolder(images, masks, num_classes=2, max_pixels=0)
    assert len(SegmentationFolder(images, masks, num_classes=2)) == 3


@pytest.mark.parametrize("problem", ["truncated", "values"])
def test_worker_errors_keep_the_file_name(tmp_path, problem):
    images, masks = _pairs(tmp_path)
    ds = SegmentationFolder(images, masks, num_classes=2)
    if problem == "truncated":  # broken after the dataset was built: found when decoding, in the worker
        data = (images / "s1.png").read_bytes()
        (images / "s1.png").write_bytes(data[: len(data) - 40])
        bad, reason = images / "s1.png", "cannot read image"
    else:
        _save(masks / "s1.png", np.full((16, 16), 9, np.uint8))
        bad, reason = masks / "s1.png", "has values [9] outside the 2 class(es)"
    with pytest.raises(DataError) as info:
        for _ in DataLoader(ds, batch_size=1, num_workers=1):
            pass
    first = str(info.value).splitlines()[0]
    assert str(bad) in first and reason in first and "worker process 0" in first, first
    assert "\n" not in str(info.value)
    assert "Traceback" in info.value.worker_traceback
    # the same error without workers
    with pytest.raises(DataError, match=re.escape(reason)):
        ds[1]
