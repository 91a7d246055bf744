"""segzoo.inference: every backend against eager, metadata in exported files, folding, predict on it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _serving import NORM, png_bytes, random_image, write_logdir
from PIL import Image

from segzoo.architectures import ARCHITECTURES, CATALYST_MODELS
from segzoo.cli import main
from segzoo.data.folder import DataError, read_image, read_image_bytes
from segzoo.export import export_checkpoint
from segzoo.inference import BACKENDS, TOLERANCES, Predictor, load_predictor, source_kind
from segzoo.inference.backends import fold_conv_bn
from segzoo.inference.processing import class_counts, run_lengths
from segzoo.inference.quantize import mask_dice

IMAGES = [random_image(64, 64, 0), random_image(48, 80, 1), random_image(37, 53, 2), random_image(64, 64, 3)]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return write_logdir(tmp_path_factory.mktemp("inference") / "log")


@pytest.fixture(scope="module")
def eager_logits(logdir):
    return load_predictor(logdir).predict(IMAGES, output="logits", batch_size=4)


@pytest.fixture
def images_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(IMAGES):
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def _worst(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_backend_list_matches_the_cli_choices():
    import segzoo.serve
    assert segzoo.serve.BACKENDS == BACKENDS


# BatchNorms that follow no single convolution, per architecture (pinned on purpose; a new row is expected to have
# none): the ASPP of DeepLabV3+ and DeepLabV3 normalises the sum of its two projections (branches and image pooling)
UNFOLDABLE = {"deeplabv3plus": ["decoder.aspp.norm"], "deeplabv3": ["decoder.aspp.norm"]}


# every architecture of the table and every model registered outside the two families: a new row is tested here
@pytest.mark.parametrize("name", [*ARCHITECTURES, *(n for n in CATALYST_MODELS.values() if n)])
def test_folding_removes_every_batchnorm_and_keeps_outputs(name):
    from _models import tiny_model

    model = tiny_model(name, num_classes=3)
    reference = copy.deepcopy(model)
    count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    left = UNFOLDABLE.get(name, [])
    assert fold_conv_bn(model, torch.randn(1, 3, 64, 64)) == count - len(left) > 0
    assert [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)] == left
    x = torch.randn(2, 3, 45, 67)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_folding_leaves_a_conv_whose_output_is_used_twice():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding bn into conv would change the second use of y

    model = Twice().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.2, 2)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        assert fold_conv_bn(model, x) == 0
        torch.testing.assert_close(model(x), before)
    assert isinstance(model.bn, torch.nn.BatchNorm2d)


@pytest.mark.export
@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_backends_from_a_checkpoint_match_eager(logdir, eager_logits, backend):
    predictor = load_predictor(logdir, backend=backend)
    assert predictor.name == backend and predictor.num_classes == 3
    got = predictor.predict(IMAGES, output="logits", batch_size=4)
    scale = max(1.0, max(float(np.abs(x).max()) for x in eager_logits))
    assert _worst(got, eager_logits) <= TOLERANCES[backend] * scale
    probs = predictor.predict(IMAGES[:1], output="probabilities")[0]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.export
def test_int8_is_calibrated_on_a_folder_and_reports_its_agreement(logdir, eager_logits, images_folder):
    messages = []
    predictor = load_predictor(logdir, backend="onnxruntime-int8", calibration=images_folder, log=messages.append)
    report = predictor.info["int8_agreement"]
    assert report["images"] == len(IMAGES)
    assert report["mask_dice_vs_fp32"] >= 0.9
    assert any("int8 calibrated on 4 image(s)" in m and "Dice" in m for m in messages)
    masks = predictor.predict(IMAGES)
    eager = [x.argmax(0) for x in eager_logits]
    assert np.mean([mask_dice(e, m, 3) for e, m in zip(eager, masks)]) >= 0.9
    with pytest.raises(ValueError, match="needs calibration images"):
        load_predictor(logdir, backend="onnxruntime-int8")


@pytest.mark.export
@pytest.mark.parametrize("fmt, suffix, kind, backend", [("onnx", ".onnx", "onnx", "onnxruntime"),
                                                        ("torchscript", ".pt", "torchscript", "torchscript"),
                                                        ("export", ".pt2", "program", "eager")])
def test_exported_files_carry_normalization_and_match_eager(logdir, eager_logits, tmp_path, fmt, suffix, kind,
                                                            backend, capsys):
    path = export_checkpoint(logdir, fmt, tmp_path / f"model{suffix}")
    assert source_kind(path) == kind
    predictor = load_predictor(path)
    assert predictor.name == backend
    assert predictor.normalization == NORM and predictor.info["normalization_source"] == "stored"
    assert predictor.num_classes == 3 and predictor.describe()["architecture"] == "unet"
    assert _worst(predictor.predict(IMAGES, output="logits"), eager_logits) <= 1e-3
    assert "warning" not in capsys.readouterr().err
    wrong = [b for b in BACKENDS if b not in {"onnx": ("onnxruntime", "onnxruntime-int8"),
                                               "torchscript": ("torchscript",), "program": ("eager",)}[kind]]
    with pytest.raises(ValueError, match="which runs on the"):
        load_predictor(path, backend=wrong[0])


@pytest.mark.export
def test_a_file_without_metadata_warns_and_uses_imagenet_unless_given(logdir, tmp_path):
    import onnx

    path = export_checkpoint(logdir, "onnx", tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    messages = []
    predictor = load_predictor(bare, log=messages.append)
    assert predictor.normalization["mean"] == [0.485, 0.456, 0.406]
    assert any("stores no normalization" in m and "--mean/--std" in m for m in messages)
    given = load_predictor(bare, normalization=NORM, log=messages.append)
    assert given.normalization == NORM and given.info["normalization_source"] == "given"
    with pytest.raises(ValueError, match="3 mean and 3 positive std"):
        load_predictor(bare, normalization={"mean": [0.5], "std": [0.5]})


def test_tiling_through_the_predictor_matches_whole_images_for_a_pointwise_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)).eval()
    predictor = Predictor.from_module(model, NORM)
    whole = predictor.predict(IMAGES[:2], output="logits")
    tiled = predictor.predict(IMAGES[:2], output="logits", tile=32, tile_overlap=8)
    assert _worst(whole, tiled) < 1e-5


@pytest.mark.export
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_predict_cli_backends_write_the_eager_masks(logdir, images_folder, tmp_path, backend, capsys):
    assert main(["predict", str(logdir), "--input", str(images_folder), "--output", str(tmp_path / "eager"),
                 "--no-progress"]) == 0
    assert main(["predict", str(logdir), "--input", str(images_folder), "--output", str(tmp_path / backend),
                 "--no-progress", "--backend", backend, "--batch-size", "2"]) == 0
    for i in range(len(IMAGES)):
        a, b = (np.asarray(Image.open(tmp_path / d / f"{i}.png")) for d in ("eager", backend))
        np.testing.assert_array_equal(a, b)


def test_predict_cli_refuses_a_backend_the_file_cannot_run(logdir, images_folder, tmp_path, capsys):
    code = main(["predict", str(logdir), "--input", str(images_folder), "--output", str(tmp_path / "o"),
                 "--mean", "0.5", "0.5", "0.5"])
    assert code == 2 and "give --mean and --std together" in capsys.readouterr().err
    path = tmp_path / "m.pt2"
    path.write_bytes(b"not really")
    code = main(["predict", str(path), "--input", str(images_folder), "--output", str(tmp_path / "o"),
                 "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "is a .pt2 program, which runs on the eager backend, not onnxruntime" in err


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "I;16"])
def test_read_image_bytes_equals_read_image(tmp_path, mode):
    rgb = random_image(24, 40, 4)
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]))
    else:
        img = Image.fromarray(rgb).convert(mode)
    img.save(tmp_path / "x.png")
    from_file = read_image(tmp_path / "x.png")
    from_bytes = read_image_bytes((tmp_path / "x.png").read_bytes())
    assert from_bytes.dtype == from_file.dtype
    np.testing.assert_array_equal(from_bytes, from_file)


def test_read_image_bytes_refuses_like_read_image():
    with pytest.raises(DataError, match="empty"):
        read_image_bytes(b"")
    with pytest.raises(DataError, match="not a recognized image"):
        read_image_bytes(b"GIF89a nonsense", name="upload")
    with pytest.raises(DataError, match="over the limit of 100 pixels"):
        read_image_bytes(png_bytes(random_image(20, 20, 0)), max_pixels=100)


def test_run_lengths_and_class_counts():
    mask = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
    rle = run_lengths(mask)
    assert rle == {"values": [0, 1, 2], "lengths": [2, 2, 2]}
    np.testing.assert_array_equal(np.repeat(rle["values"], rle["lengths"]).reshape(2, 3), mask)
    assert class_counts(mask, 3) == {0: 2, 1: 2, 2: 2}
    assert class_counts(np.array([[0, 255]], np.uint8), 1) == {0: 1, 1: 1}


# ---- issue 19, point 11: a .pt2 program given a size it does not take says which sizes it takes ------------

@pytest.mark.export
@pytest.mark.filterwarnings("ignore:No complete tensor found")
def test_a_program_refuses_sizes_it_does_not_take_in_one_line(tmp_path, images_folder, capsys):
    from _models import tiny_model

    from segzoo.export.program import export_program
    from segzoo.inference.backends import load_program

    model = tiny_model("unet", num_classes=3)
    m = model.size_multiple
    dynamic = export_program(model, tmp_path / "dynamic.pt2", torch.randn(2, 3, 8 * m, 8 * m))
    backend, _ = load_program(dynamic)
    assert (backend.pad_multiple, backend.min_size) == (m, 2 * m)
    with pytest.raises(ValueError, match=rf"dynamic\.pt2 takes \(B, C, H, W\) with B 1\.\.4096, C exactly 3, "
                                         rf"H, W a multiple of {m} in {2 * m}\.\.65536; got \(1, 3, {8 * m + 1}, {8 * m}\)"):
        backend(torch.randn(1, 3, 8 * m + 1, 8 * m))
    with pytest.raises(ValueError, match="got \\(1, 1, "):
        backend(torch.randn(1, 1, 8 * m, 8 * m))
    # a program exported by hand for one size: that size works, others are one line naming it
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 64, 64),)), str(static))
    predictor = load_predictor(static, normalization=NORM)
    assert predictor.predict([IMAGES[0]])[0].shape == (64, 64)
    with pytest.raises(ValueError, match=r"static\.pt2 takes .* H, W exactly 64; got \(1, 3, 48, 80\)"):
        predictor.predict([IMAGES[1]])
    code = main(["predict", str(static), "--input", str(images_folder), "--output", str(tmp_path / "out"),
                 "--mean", *map(str, NORM["mean"]), "--std", *map(str, NORM["std"]), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "H, W exactly 64" in err and "Guard" not in err


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_predict_without_the_export_extra_is_one_line_naming_it(logdir, images_folder, tmp_path, monkeypatch, capsys,
                                                                missing):
    import sys

    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if the package were not installed
    code = main(["predict", str(logdir), "--input", str(images_folder), "--output", str(tmp_path / "out"),
                 "--backend", "onnxruntime", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{missing} package" in err and "segzoo[export]" in err
    assert not (tmp_path / "out").exists()
