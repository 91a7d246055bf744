"""segzoo predict: one mask PNG per image, equal to the eager model's prediction after normalization."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from _h4_helpers import NORM, assert_user_error, tiny_model, write_checkpoint
from PIL import Image

import segzoo.inference.processing
import segzoo.predict
from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, palette
from segzoo.predict import tiled_logits

MARGIN = 1e-4  # pixels whose decision is closer than this to a tie are not compared


# ---- helpers -----------------------------------------------------------------------------

def _image(h, w, seed):
    """A smooth random RGB picture (uint8, H x W x 3): blobs, so masks have regions, not noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    noise = rng.integers(-20, 21, big.shape)
    return np.clip(big.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _write(folder, name, image, fmt="PNG"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(image).save(path, format=fmt)
    with Image.open(path) as img:  # what predict reads: the decoded file (JPEG is lossy)
        return path, np.asarray(img.convert("RGB"))


def _normalization(checkpoint):
    """The normalization stored in a checkpoint file, read independently of segzoo.predict."""
    return torch.load(checkpoint, weights_only=True)["normalization"]


def _logits(model, image, norm):
    """The training normalization ``(x / 255 - mean) / std``, then the eager model: (K, H, W)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    if len(norm["mean"]) == 1:  # one-channel models read ITU-R 601 luminance
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    x = (x - torch.tensor(norm["mean"]).view(-1, 1, 1)) / torch.tensor(norm["std"]).view(-1, 1, 1)
    with torch.no_grad():
        return model.eval()(x[None])[0]


def _classes(logits):
    """(argmax classes, pixels whose best and second-best logits differ by more than MARGIN)."""
    top = logits.topk(2, dim=0).values
    return logits.argmax(0).numpy(), (top[0] - top[1] > MARGIN).numpy()


def _assert_same(mask, expected, confident):
    assert mask.shape == expected.shape
    assert confident.mean() > 0.99
    np.testing.assert_array_equal(mask[confident], expected[confident])


def _read_mask(path):
    with Image.open(path) as img:
        return np.asarray(img)


def _lively(model, norm):
    """Rescale the classifier so each logit has mean 0 and std 1 over a calibration picture.

    Random tiny models give nearly constant logits (std ~0.005): one class everywhere, ties
    close to float noise. The bilinear upsampling after the classifier is affine, so this holds.
    """
    conv = model.head.classifier
    logits = _logits(model, _image(48, 64, 99), norm)
    mean, std = logits.mean((1, 2)), logits.std((1, 2))
    with torch.no_grad():
        conv.weight.div_(std.view(-1, 1, 1, 1))
        conv.bias.sub_(mean).div_(std)
    return model


def _class_log(tmp_path, num_classes=3, in_channels=3, norm=NORM, arch="unet"):
    model = _lively(tiny_model(arch, num_classes=num_classes, in_channels=in_channels), norm)
    path = write_checkpoint(tmp_path / "log", model, normalization=norm)
    return tmp_path / "log", path, model


def _pointwise_log(tmp_path, num_classes=3, normalization=NORM):
    """A checkpoint of the helpers' ``pointwise`` user model (1x1 conv: no context across pixels)."""
    import h4_user_models

    torch.manual_seed(3)
    model = h4_user_models.pointwise(num_classes=num_classes)
    spec = {"name": "pointwise", "kwargs": {"num_classes": num_classes}}
    path = write_checkpoint(tmp_path / "plog", model, spec=spec, normalization=normalization)
    return tmp_path / "plog", path, model


# ---- masks -------------------------------------------------------------------------------

def test_multiclass_masks_equal_the_eager_prediction(tmp_path, cli):
    logdir, ckpt, model = _class_log(tmp_path, num_classes=3)
    norm = _normalization(ckpt)
    assert norm == NORM
    images = dict([_write(tmp_path / "in", "a_odd.png", _image(37, 53, 1)),
                   _write(tmp_path / "in", "b_square.png", _image(32, 32, 2)),
                   _write(tmp_path / "in", "c_wide.png", _image(20, 64, 3)),
                   _write(tmp_path / "in", "d_photo.jpg", _image(45, 30, 4), "JPEG")])
    (tmp_path / "in" / "notes.txt").write_text("not an image")  # ignored
    out = tmp_path / "masks"
    code, stdout, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress")
    assert code == 0, err
    assert "wrote 4 mask(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_odd.png", "b_square.png", "c_wide.png", "d_photo.png"]
    seen = set()
    for path, image in images.items():
        mask = _read_mask(out / f"{path.stem}.png")
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert mask.max() < 3
        logits = _logits(model, image, norm)
        expected, confident = _classes(logits)
        _assert_same(mask, expected, confident)
        seen |= set(np.unique(mask).tolist())
        # the test can tell the checkpoint's normalization from ImageNet's
        other, _ = _classes(_logits(model, image, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}))
        assert (other != expected).any()
    assert len(seen) >= 2  # not a constant prediction


def test_binary_masks_are_0_255_and_follow_the_threshold(tmp_path, cli):
    logdir, ckpt, model = _class_log(tmp_path, num_classes=1, arch="fpn_unet")
    _, image = _write(tmp_path / "in", "x.png", _image(37, 53, 5))
    prob = torch.sigmoid(_logits(model, image, _normalization(ckpt))[0]).numpy()
    # a threshold that splits this image's pixels about 30/70, to see both classes
    for threshold in (0.5, float(np.quantile(prob, 0.3))):
        out = tmp_path / f"out{threshold}"
        code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out,
                           "--threshold", threshold, "--no-progress")
        assert code == 0, err
        mask = _read_mask(out / "x.png")
        assert mask.shape == (37, 53) and set(np.unique(mask).tolist()) <= {0, 255}
        confident = np.abs(prob - threshold) > MARGIN
        np.testing.assert_array_equal(mask[confident], np.where(prob > threshold, 255, 0)[confident])
    low = _read_mask(tmp_path / f"out{float(np.quantile(prob, 0.3))}" / "x.png")
    assert (low == 255).mean() == pytest.approx(0.7, abs=0.02)


def test_overlay_blends_class_colours(tmp_path, cli):
    logdir, _, _ = _class_log(tmp_path, num_classes=3)
    _, image = _write(tmp_path / "in", "pic.png", _image(37, 53, 6))
    out = tmp_path / "out"
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--overlay", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["pic.png", "pic_overlay.png"]
    mask = _read_mask(out / "pic.png").astype(np.int64)
    with Image.open(out / "pic_overlay.png") as img:
        assert img.mode == "RGB" and img.size == (53, 37)
        blended = np.asarray(img).astype(np.int64)
    assert (mask == 0).any() and (mask > 0).any()
    background = mask == 0
    np.testing.assert_array_equal(blended[background], image[background])
    colours = palette(3)[mask].astype(np.float64)
    want = np.round(image * 0.5 + colours * 0.5)
    assert np.abs(blended[~background] - want[~background]).max() <= 1


def test_single_image_and_batches_of_same_size_images(tmp_path, cli):
    logdir, ckpt, model = _class_log(tmp_path, num_classes=3, arch="linknet")
    sizes = {"a.png": (32, 32), "b.png": (32, 32), "c.png": (37, 53), "d.png": (32, 32), "e.png": (32, 32)}
    images = {name: _write(tmp_path / "in", name, _image(h, w, i))[1] for i, (name, (h, w)) in enumerate(sizes.items())}
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in" / "c.png", "--output", tmp_path / "one",
                       "--no-progress")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["c.png"]
    # a batch of 3 groups same-size neighbours only; every mask is still its own image's prediction
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "batched",
                       "--batch-size", 3, "--no-progress")
    assert code == 0, err
    norm = _normalization(ckpt)
    for name, image in images.items():
        expected, confident = _classes(_logits(model, image, norm))
        _assert_same(_read_mask(tmp_path / "batched" / name), expected, confident)
    np.testing.assert_array_equal(_read_mask(tmp_path / "one" / "c.png"), _read_mask(tmp_path / "batched" / "c.png"))


def test_one_channel_model_reads_luminance(tmp_path, cli):
    norm = {"mean": [0.45], "std": [0.2]}
    logdir, _, model = _class_log(tmp_path, num_classes=3, in_channels=1, norm=norm)
    _, image = _write(tmp_path / "in", "g.png", _image(29, 41, 7))
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "out", "--no-progress")
    assert code == 0, err
    expected, confident = _classes(_logits(model, image, norm))
    _assert_same(_read_mask(tmp_path / "out" / "g.png"), expected, confident)


def test_many_classes_give_16_bit_masks(tmp_path, cli, user_models):
    logdir, _, model = _pointwise_log(tmp_path, num_classes=300)
    _, image = _write(tmp_path / "in", "m.png", _image(24, 40, 8))
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "out",
                       "--model", "h4_user_models:pointwise", "--no-progress")
    assert code == 0, err
    mask = _read_mask(tmp_path / "out" / "m.png").astype(np.int64)
    expected, confident = _classes(_logits(model, image, NORM))
    assert expected.max() > 255  # the test needs class indices beyond 8 bits
    assert mask.max() < 300
    _assert_same(mask, expected, confident)


def test_checkpoint_without_normalization_uses_imagenet(tmp_path, cli, user_models):
    logdir, _, model = _pointwise_log(tmp_path, normalization=None)
    _, image = _write(tmp_path / "in", "n.png", _image(30, 30, 9))
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in", "--output", tmp_path / "out",
                       "--model", "h4_user_models:pointwise", "--no-progress")
    assert code == 0, err
    expected, confident = _classes(_logits(model, image, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}))
    assert (expected != _classes(_logits(model, image, NORM))[0]).any()
    _assert_same(_read_mask(tmp_path / "out" / "n.png"), expected, confident)


def test_16_bit_images_give_the_mask_of_their_8_bit_version(tmp_path, cli):
    logdir, ckpt, model = _class_log(tmp_path, num_classes=3)
    grey = _image(37, 53, 19)[..., 0]
    (tmp_path / "in16").mkdir()
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "in16" / "g.png")  # mode I;16
    rgb = np.repeat(grey[..., None], 3, -1)
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in16", "--output", tmp_path / "out", "--overlay",
                       "--no-progress")
    assert code == 0, err
    expected, confident = _classes(_logits(model, rgb, _normalization(ckpt)))
    _assert_same(_read_mask(tmp_path / "out" / "g.png"), expected, confident)
    assert len(np.unique(expected)) >= 2  # a flattened (0/255) input would not give this mask
    with Image.open(tmp_path / "out" / "g_overlay.png") as img:
        blended = np.asarray(img)
    background = _read_mask(tmp_path / "out" / "g.png") == 0
    np.testing.assert_array_equal(blended[background], rgb[background])  # shown at 8 bits


# ---- tiling ------------------------------------------------------------------------------

def _spy_on_forward(monkeypatch):
    """Record the input shape of every forward pass of the model predict loads."""
    shapes = []
    real = segzoo.predict.load_model_info

    def load(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.model.register_forward_pre_hook(lambda mod, inputs: shapes.append(tuple(inputs[0].shape)))
        return loaded

    monkeypatch.setattr(segzoo.predict, "load_model_info", load)
    return shapes


def test_tiles_give_the_untiled_mask_for_a_pointwise_model(tmp_path, cli, user_models, monkeypatch):
    logdir, _, model = _pointwise_log(tmp_path)
    _, image = _write(tmp_path / "in", "big.png", _image(90, 130, 10))
    shapes = _spy_on_forward(monkeypatch)
    common = ("predict", logdir, "--model", "h4_user_models:pointwise", "--input", tmp_path / "in", "--no-progress")
    assert cli(*common, "--output", tmp_path / "whole")[0] == 0
    assert shapes == [(1, 3, 90, 130)]
    shapes.clear()
    code, _, err = cli(*common, "--output", tmp_path / "tiled", "--tile", 32, "--tile-overlap", 8, "--batch-size", 4)
    assert code == 0, err
    # windows start every 24 px and the last is flush with the border: 4 rows x 6 columns, 4 per pass
    assert shapes == [(4, 3, 32, 32)] * 6
    whole, tiled = _read_mask(tmp_path / "whole" / "big.png"), _read_mask(tmp_path / "tiled" / "big.png")
    expected, confident = _classes(_logits(model, image, NORM))
    _assert_same(whole, expected, confident)
    _assert_same(tiled, expected, confident)
    assert len(np.unique(tiled)) == 3


def test_tiled_logits_average_overlaps():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(1, 3, 50, 71)
    with torch.no_grad():
        ref = pointwise(x)
    for tile, overlap, batch in [(16, 4, 1), (20, 0, 3), (64, 16, 2), (100, 10, 1)]:
        assert torch.allclose(tiled_logits(pointwise, x, tile, overlap, batch), ref, atol=1e-6), (tile, overlap)
    # a model with context differs at tile borders: the comparison above is not vacuous
    wide = torch.nn.Conv2d(3, 4, 5, padding=2)
    with torch.no_grad():
        assert not torch.allclose(tiled_logits(wide, x, 16, 4), wide(x), atol=1e-3)


# ---- issue 19, point 15: overlapping windows blend to the untiled result -------------------------------------

def _short_context(seed=0):
    """Three 3x3 convolutions: each output pixel sees 3 pixels around it (zero padding at every border)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("shape, tile, overlap, align", [((1, 3, 96, 96), 64, 16, 1), ((2, 3, 70, 131), 32, 16, 1),
                                                         ((1, 3, 150, 97), 64, 12, 4), ((1, 3, 96, 200), 48, 24, 8)])
def test_tiled_logits_equal_untiled_ones_when_the_context_fits_in_the_overlap(shape, tile, overlap, align):
    """Blending weights vanish within overlap / 4 of a window's inner borders: a model that sees no farther
    gets the untiled logits (the old plain average changed them by up to ~1 near every window border)."""
    model = _short_context()
    x = torch.randn(*shape)
    with torch.no_grad():
        whole = model(x)
    tiled = tiled_logits(model, x, tile, overlap, batch_size=3, align=align)
    assert (tiled - whole).abs().max() < 1e-3 * whole.abs().max()


def test_tiles_match_untiled_masks_of_a_model_with_long_context_far_better_than_a_plain_average():
    """A segzoo Unet sees the whole 96-px image; 64-px windows lose context, the blend hides most of it."""
    from segzoo.inference import Predictor
    from segzoo.inference.processing import logits_to_masks

    model = _lively(tiny_model("unet", num_classes=3), NORM)
    predictor = Predictor.from_module(model, NORM)
    images = [_image(96, 96, seed) for seed in range(4)]
    xs = torch.stack([predictor.preprocess(img) for img in images])
    whole = logits_to_masks(predictor(xs))
    tiled = logits_to_masks(predictor.logits(xs, tile=64))

    def uniform(start, length, size, margin):  # the old plain average of overlapping windows
        return torch.ones(length)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segzoo.inference.processing, "_blend_weights", uniform)
        averaged = logits_to_masks(predictor.logits(xs, tile=64))
    changed, changed_before = int((tiled != whole).sum()), int((averaged != whole).sum())
    assert changed <= changed_before / 2 and changed <= 0.01 * whole.size, (changed, changed_before)


@pytest.mark.parametrize("size, tile, overlap, align, expected_grid", [
    (96, 64, 16, 32, 32), (97, 64, 16, 32, 16), (200, 64, 16, 1, 1), (200, 64, 16, 32, 16), (1000, 64, 32, 32, 32),
    (65, 64, 0, 1, 1), (130, 48, 24, 32, 1), (100, 32, 8, 32, 1), (300, 40, 20, 16, 4)])
def test_windows_cover_the_axis_aligned_with_the_promised_overlap(size, tile, overlap, align, expected_grid):
    from segzoo.inference.processing import tile_windows

    windows = tile_windows(size, tile, overlap, align)
    assert windows[0][0] == 0 and sum(windows[-1]) == size
    unaligned = tile_windows(size, tile, overlap, 1)
    assert len(windows) == len(unaligned)  # alignment costs no extra window
    assert unaligned[-1] == (size - tile, tile) if size > tile else unaligned == [(0, size)]
    grid = max(a for a in (align, align // 2, align // 4, align // 8, 1) if a and all(s % a == 0 for s, _ in windows))
    assert grid == expected_grid and all(0 < n <= tile for _, n in windows)
    for (a, na), (b, _) in zip(windows, windows[1:]):
        assert a < b and a + na - b >= overlap
    assert tile_windows(64, 64, 16, 32) == [(0, 64)] and tile_windows(50, 64, 16, 32) == [(0, 50)]


def test_a_tile_at_least_the_image_size_runs_the_image_whole(tmp_path, cli, monkeypatch):
    logdir, _, model = _class_log(tmp_path)
    _, image = _write(tmp_path / "in", "a.png", _image(96, 80, 5))
    shapes = _spy_on_forward(monkeypatch)
    common = ("predict", logdir, "--input", tmp_path / "in", "--no-progress")
    assert cli(*common, "--output", tmp_path / "whole")[0] == 0
    for tile in (96, 128):
        shapes.clear()
        assert cli(*common, "--output", tmp_path / f"t{tile}", "--tile", tile)[0] == 0
        assert shapes == [(1, 3, 96, 80)]  # one pass over the whole image, no windows
        np.testing.assert_array_equal(_read_mask(tmp_path / f"t{tile}" / "a.png"), _read_mask(tmp_path / "whole" / "a.png"))
    shapes.clear()
    assert cli(*common, "--output", tmp_path / "t64", "--tile", 64, "--batch-size", 4)[0] == 0
    assert shapes == [(4, 3, 64, 64)]  # a smaller tile does tile: 2 x 2 windows in one pass


# ---- errors: one line, nothing written ---------------------------------------------------

def test_empty_folder_and_missing_input(tmp_path, logdir, cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "empty", "--output", out), "has no", "images")
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "nothere", "--output", out), "input not found")
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "empty" / "readme.txt", "--output", out),
                      "not a")
    assert not out.exists()


def _truncated(fmt):
    buf = io.BytesIO()
    Image.fromarray(_image(40, 50, 11)).save(buf, format=fmt)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("name, data", [
    ("z_text.png", b"definitely not a PNG"),
    ("z_empty.png", b""),
    ("z_truncated.png", _truncated("PNG")),
    ("z_truncated.jpg", _truncated("JPEG")),
])
def test_unreadable_image_fails_before_any_mask_is_written(tmp_path, logdir, cli, name, data):
    _write(tmp_path / "in", "a_good.png", _image(32, 32, 12))
    (tmp_path / "in" / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out, "--no-progress"),
                      "cannot read image", name)
    assert list(out.iterdir()) == []  # the good image, sorted first, got no mask either


def test_missing_checkpoint(tmp_path, logdir, cli):
    _write(tmp_path / "in", "a.png", _image(32, 32, 13))
    out = tmp_path / "out"
    assert_user_error(cli("predict", tmp_path / "nolog", "--input", tmp_path / "in", "--output", out),
                      "no such log directory")
    assert_user_error(cli("predict", logdir, "-c", "bset", "--input", tmp_path / "in", "--output", out),
                      "'bset' not found", "available: best, last, stage1.2")
    (tmp_path / "emptylog" / "checkpoints").mkdir(parents=True)
    assert_user_error(cli("predict", tmp_path / "emptylog", "--input", tmp_path / "in", "--output", out),
                      "'best' not found", "available: none")
    truncated = tmp_path / "t.pth"
    truncated.write_bytes((logdir / "checkpoints" / "best.pth").read_bytes()[:1000])
    assert_user_error(cli("predict", truncated, "--input", tmp_path / "in", "--output", out), "truncated")
    assert not out.exists()


def test_existing_masks_are_refused_unless_force(tmp_path, cli):
    logdir, ckpt, model = _class_log(tmp_path, num_classes=3)
    _, image = _write(tmp_path / "in", "a.png", _image(37, 53, 14))
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.full((5, 5), 7, np.uint8)).save(out / "a.png")
    before = (out / "a.png").read_bytes()
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out), "exists", "--force")
    assert (out / "a.png").read_bytes() == before
    # the overlay name is checked too, before anything is written
    (out / "b_overlay.png").write_bytes(b"old")
    _write(tmp_path / "in", "b.png", _image(32, 32, 15))
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in" / "b.png", "--output", out, "--overlay"),
                      "b_overlay.png", "exists")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b_overlay.png"]
    code, _, err = cli("predict", logdir, "--input", tmp_path / "in" / "a.png", "--output", out, "--force",
                       "--no-progress")
    assert code == 0, err
    expected, confident = _classes(_logits(model, image, _normalization(ckpt)))
    _assert_same(_read_mask(out / "a.png"), expected, confident)
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []


def test_bad_options_and_outputs(tmp_path, logdir, cli):
    _write(tmp_path / "in", "a.png", _image(32, 32, 16))
    _write(tmp_path / "in", "a.jpg", _image(32, 32, 17), "JPEG")
    _write(tmp_path / "solo", "s.png", _image(32, 32, 18))
    out = tmp_path / "out"
    solo = ("--input", tmp_path / "solo", "--output", out)
    assert_user_error(cli("predict", logdir, "--input", tmp_path / "in", "--output", out), "a.jpg and ",
                      "a.png would both write", str(out / "a.png"))
    assert_user_error(cli("predict", logdir, *solo, "--threshold", 1.5), "threshold")
    assert_user_error(cli("predict", logdir, *solo, "--tile", 0), "tile size")
    assert_user_error(cli("predict", logdir, *solo, "--tile", 32, "--tile-overlap", 32), "tile overlap")
    assert_user_error(cli("predict", logdir, *solo, "--batch-size", 0), "batch size")
    assert not out.exists()
    out.write_text("a file")
    assert_user_error(cli("predict", logdir, *solo), "is a file")
    assert out.read_text() == "a file"
