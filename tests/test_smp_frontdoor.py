"""The smp front door (issue 22 points 1, 2, 5): README's smp table runs against smp 0.6, the constructors
follow the architecture table, save_pretrained/from_pretrained, torch.jit.script and ONNX's dynamic axes."""

from __future__ import annotations

import atexit
import inspect
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import segzoo.smp as front
from segzoo.architectures import ARCHITECTURES, smp_twins
from segzoo.errors import CheckpointError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _table_calls() -> list[str]:
    """The first cell of every row of README's smp table (the smp call)."""
    section = README.split("## Coming from segmentation_models_pytorch", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `smp.") or line.startswith("| `torch.jit")]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]


def _save(model) -> str:
    folder = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, folder, True)  # 55 MB per call: left behind, a suite run filled /tmp
    model.save_pretrained(folder)
    return folder


def _namespace(smp_module) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"smp": smp_module, "torch": torch, "save": _save,
            "x": torch.rand(2, 3, 64, 64, generator=g), "logits": torch.randn(2, 3, 64, 64, generator=g),
            "mask": torch.randint(0, 3, (2, 64, 64), generator=g),
            "labels": torch.randint(0, 2, (2, 3, 64, 64), generator=g),
            "image": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)}


def test_readme_table_has_the_rows_this_test_runs():
    calls = _table_calls()
    assert len(calls) >= 18
    joined = "\n".join(calls)
    for name in ("from_pretrained", "jit.script", "get_preprocessing_fn", "FocalLoss", "LovaszLoss", "MCCLoss",
                 "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "micro-imagewise", "MULTICLASS_MODE",
                 "from_logits=True"):
        assert name in joined, name


@pytest.mark.slow
@pytest.mark.parametrize("call", _table_calls())
def test_readme_row_gives_smps_result(call):
    ref = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = eval(call, _namespace(ref))  # noqa: S307 (README's own text)
        ours = eval(call, _namespace(front))  # noqa: S307
    if isinstance(theirs, torch.Size):
        assert ours == theirs
    else:
        ours, theirs = (v.detach().numpy() if isinstance(v, torch.Tensor) else v for v in (ours, theirs))
        assert np.allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64), atol=1e-5)


def test_front_door_has_a_class_per_table_row_with_smps_signature():
    assert set(front.MODEL_CLASSES) == set(smp_twins().values())
    ref = pytest.importorskip("segmentation_models_pytorch")
    for name, cls in front.MODEL_CLASSES.items():
        theirs = [(p.name, p.default) for p in inspect.signature(getattr(ref, name)).parameters.values()]
        ours = [(p.name, p.default) for p in inspect.signature(cls).parameters.values()]
        assert ours == theirs, name


@pytest.mark.parametrize("name", sorted(smp_twins().values()))
def test_every_constructor_builds_and_applies_the_activation(name):
    tokens = {row.smp for row in ARCHITECTURES.values() if row.encoder_kind == "tokens"}
    encoder = "tu-test_vit" if name in tokens else "resnet18"  # DPT takes a plain ViT
    model = getattr(front, name)(encoder, encoder_weights=None, in_channels=1, classes=3,
                                 activation="sigmoid").eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, 64, 48))
    assert y.shape == (2, 3, 64, 48) and float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"encoder_name": "efficientnet-b0"}, "not an encoder segzoo has"),
    ({"aux_params": {"pooling": "avg"}}, "aux_params: missing key .classes."),
    ({"decoder_attention_type": "scse"}, "decoder_attention_type='scse' is not supported"),
    ({"encoder_weights": "ssl"}, "encoder_weights='ssl'"),
    ({"activation": "softplus"}, "activation='softplus'"),
    ({"nonsense": 1}, "unexpected argument"),
])
def test_what_segzoo_cannot_build_is_one_line(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        front.Unet(**{"encoder_weights": None, **kwargs})
    assert "\n" not in str(info.value)


def test_create_model_any_case_and_unknown_arch():
    assert type(front.create_model("deeplabv3plus", "resnet18", encoder_weights=None)).__name__ == "DeepLabV3Plus"
    with pytest.raises(KeyError, match="segzoo.smp has"):
        front.create_model("Unet3D", encoder_weights=None)


def test_non_default_decoder_arguments_reach_segzoos_decoder():
    model = front.Unet("resnet18", encoder_weights=None, decoder_channels=(128, 64, 32, 16, 8))
    assert model.decoder.out_channels == [16, 32, 64, 128]
    model = front.FPN("resnet18", encoder_weights=None, decoder_pyramid_channels=64)
    assert model.decoder.out_channels[0] == 64


def test_preprocessing_is_offline_and_hwc_numpy():
    params = front.encoders.get_preprocessing_params("resnet34")
    assert params == {"input_space": "RGB", "input_range": [0, 1], "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225]}
    image = np.full((4, 5, 3), 255, dtype=np.uint8)
    out = front.encoders.get_preprocessing_fn("resnet34")(image)
    assert isinstance(out, np.ndarray) and out.shape == (4, 5, 3)
    assert np.allclose(out[0, 0], (1 - np.array(params["mean"])) / np.array(params["std"]))
    with pytest.raises(ValueError, match="not an encoder segzoo has"):
        front.encoders.get_preprocessing_params("efficientnet-b0")


# --- save_pretrained / from_pretrained (point 2) ---------------------------------------------------------

def test_segzoo_model_round_trip_and_classes_change(tmp_path):
    from segzoo import ResnetUnet

    model = ResnetUnet(arch="resnet18", pretrained=False, num_classes=2).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    x = torch.rand(1, 3, 64, 64)
    again = ResnetUnet.from_pretrained(tmp_path)
    assert torch.equal(again(x), model(x))
    with pytest.raises(CheckpointError, match="pass strict=False") as info:
        ResnetUnet.from_pretrained(tmp_path, classes=5)
    assert "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="another shape not loaded"):
        tuned = ResnetUnet.from_pretrained(tmp_path, classes=5, strict=False)
    assert tuned(x).shape == (1, 5, 64, 64)
    assert torch.equal(tuned.encoder.state_dict()["stem.0.weight"] if "stem.0.weight" in tuned.encoder.state_dict()
                       else next(iter(tuned.encoder.parameters())), next(iter(model.encoder.parameters())))


def test_front_door_round_trip_keeps_activation_and_class(tmp_path):
    model = front.DeepLabV3Plus("resnet18", encoder_weights=None, classes=3, activation="softmax2d").eval()
    model.save_pretrained(tmp_path)
    again = front.from_pretrained(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert type(again) is type(model) and torch.allclose(again(x), model(x))
    with pytest.raises(CheckpointError, match="not Unet"):
        front.Unet.from_pretrained(tmp_path)
    from segzoo.models import UnetMetaSpec

    with pytest.raises(CheckpointError, match="segzoo.smp.from_pretrained"):
        UnetMetaSpec.from_pretrained(tmp_path)


def _write(folder: Path, config: object | None = None, weights: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.mark.parametrize(("config", "weights", "match"), [
    ({"_model_class": "Unet", "encoder_name": "resnet34"}, b"", "segmentation_models_pytorch"),
    ({"architectures": ["BertModel"]}, b"", "not a segzoo save_pretrained config"),
    ("{not json", b"", "not a readable JSON file"),
    (None, None, "config.json: no such file"),
    ("corrupt-weights", b"\x00\x01garbage", "not a valid safetensors file"),
    ({"segzoo_format": "segzoo-pretrained", "format_version": 1, "builder": "segzoo.models",
      "spec": {"name": "no_such_model", "kwargs": {}}}, b"", "cannot rebuild the model"),
])
def test_foreign_or_broken_folders_are_refused_in_one_line(tmp_path, config, weights, match):
    from segzoo import ResnetUnet

    if config == "corrupt-weights":
        folder = tmp_path / "m"
        ResnetUnet(arch="resnet18", pretrained=False, num_classes=2).save_pretrained(folder)
        _write(folder, weights=weights)
    else:
        folder = _write(tmp_path / "m", config, weights)
    with pytest.raises((CheckpointError, FileNotFoundError), match=match) as info:
        ResnetUnet.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_paths_that_are_not_folders(tmp_path):
    from segzoo import ResnetUnet

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ResnetUnet.from_pretrained(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ResnetUnet.from_pretrained(str(tmp_path / "missing" / ".." / ".." / "x"))
    with pytest.raises(NotADirectoryError):
        ResnetUnet(arch="resnet18", pretrained=False).save_pretrained(tmp_path / "file")


def test_save_pretrained_refuses_to_replace_a_foreign_config(tmp_path):
    from segzoo import ResnetUnet

    _write(tmp_path, {"_model_class": "Unet"})
    with pytest.raises(CheckpointError, match="segmentation_models_pytorch"):
        ResnetUnet(arch="resnet18", pretrained=False).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"_model_class": "Unet"}


# --- torch.jit.script and ONNX (point 5) -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(smp_twins()))
def test_torch_jit_script_every_architecture(name):
    from segzoo.models import create_model

    models = [create_model(name, num_classes=2)]
    if ARCHITECTURES[name].resnet_class:  # DPT has no ResNet family
        models.append(create_model(f"resnet18_{name}", num_classes=2, pretrained=False))
    for model in models:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        for shape in ((1, 3, 64, 64), (3, 3, 40, 72)):
            x = torch.rand(*shape)
            with torch.no_grad():
                assert torch.allclose(scripted(x), model(x), atol=1e-5), (name, shape)


@pytest.mark.slow
@pytest.mark.export
def test_onnx_from_a_batch_of_one_declares_batch_height_width_dynamic(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from segzoo.export.onnx import export_onnx

    model = front.Unet("resnet18", encoder_weights=None, classes=2, activation="sigmoid")
    path = export_onnx(model, tmp_path / "m.onnx", torch.rand(1, 3, 64, 64))
    graph = onnx.load(path).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (graph.input[0],
                                                                                      graph.output[0])]
    assert dims == [["batch", 3, "height", "width"], ["batch", 2, "height", "width"]]


def test_torch_jit_script_in_training_mode_leaves_batchnorm_statistics_alone():
    from segzoo.models import create_model

    model = create_model("resnet18_unet", num_classes=2, pretrained=False).train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model)
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())


def test_dpt_reads_token_maps_spread_over_the_vits_blocks():
    """smp's DPT reads ``encoder_depth`` token maps spread over the ViT (before: blocks 0..3, the rest cut off)."""
    pytest.importorskip("timm")
    model = front.DPT("tu-test_vit", encoder_weights=None, classes=2)
    assert model.encoder.indices[-1] == 5 and len(model.encoder.indices) == 4
    assert len(model.encoder.model.blocks) == 6
