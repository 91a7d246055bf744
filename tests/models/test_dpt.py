"""DPT on plain ViT encoders (issue 21 point 2): sizes, exports, the encoder <-> architecture fit check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _models import TINY_VIT, tiny_model
from torch.export import Dim

import segzoo
from segzoo import DPT, create_model
from segzoo.architectures import model_names
from segzoo.encoders import ResnetEncoder, TimmEncoder, ViTEncoder, create_encoder

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")


def _scaled(model, scale=100.0):
    """Logits of order 1 (the default init gives ~0.02), so a 1e-4 tolerance is a real check."""
    with torch.no_grad():
        model.head.classifier.weight.mul_(scale)
    return model.eval()


def test_timm_encoder_of_a_plain_vit_is_a_token_encoder():
    enc = TimmEncoder("test_vit")
    assert isinstance(enc, ViTEncoder) and isinstance(create_encoder("timm_vit", name="test_vit"), ViTEncoder)
    assert enc.out_strides == [16] * 4 and enc.out_channels == [64] * 4
    assert len(enc.model.blocks) == enc.indices[-1] + 1  # no block after the deepest one used
    assert not isinstance(TimmEncoder("test_resnet"), ViTEncoder)
    assert TimmEncoder("test_vit", out_indices=[0, 2]).indices == [0, 2]
    x = torch.rand(2, 3, 48, 80)
    assert [tuple(f.shape) for f in enc(x)] == [(2, 64, 3, 5)] * 4


@pytest.mark.parametrize("name", ["test_vit", "test_vit2"])
def test_vit_encoder_equals_timm_at_its_native_size(name):
    import timm

    torch.manual_seed(0)
    enc = ViTEncoder(name, readout="ignore").eval()
    ref = timm.create_model(name, num_classes=0).eval()
    ref.load_state_dict(enc.model.state_dict(), strict=False)  # the encoder dropped the final norm it does not use
    x = torch.rand(2, 3, 160, 160)  # test_vit's img_size
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=enc.indices, intermediates_only=True)
        for got, expected in zip(enc(x), want):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (33, 97), (1, 1), (96, 32), (81, 17)])
def test_dpt_returns_exactly_the_input_size(hw):
    model = DPT(num_classes=3, encoder=TimmEncoder("test_vit")).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *hw)).shape == (2, 3, *hw)


@pytest.mark.parametrize("readout", ["ignore", "add", "cat"])
def test_dpt_trains_with_every_readout(readout):
    model = DPT(num_classes=2, encoder_params={**TINY_VIT, "readout": readout}).train()
    y = model(torch.rand(2, 3, 48, 64))
    assert y.shape == (2, 2, 48, 64)
    y.mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_dpt_registry_spec_and_no_resnet_family():
    model = create_model("dpt", num_classes=2, encoder_params=TINY_VIT)
    assert isinstance(model, DPT) and isinstance(model.encoder, ViTEncoder)
    assert model.segzoo_spec == {"name": "dpt", "kwargs": {"num_classes": 2, "encoder_params": TINY_VIT}}
    assert "dpt" in segzoo.list_models() and "dpt" in model_names()
    assert not any(n.endswith("_dpt") for n in segzoo.list_models())  # a ResNet has no token maps
    with pytest.raises(KeyError):
        create_model("resnet18_dpt")


def test_dpt_on_a_pyramid_encoder_is_one_line_naming_what_fits():
    with pytest.raises(ValueError) as info:
        DPT(encoder=ResnetEncoder("resnet18", pretrained=False, layers_indices=[1, 2, 3, 4]))
    assert str(info.value) == ("DPT needs a plain ViT encoder (one stride, e.g. TimmEncoder('vit_small_patch16_224')); "
                               "ResnetEncoder has strides [4, 8, 16, 32]")
    with pytest.raises(ValueError, match=r"DPT needs a plain ViT encoder .*TimmEncoder has strides \[2, 4, 8, 16, 32\]"):
        DPT(encoder=TimmEncoder("test_resnet"))
    with pytest.raises(ValueError, match="not a plain ViT"):  # by name, from a config: a CNN is no ViT
        create_model("dpt", encoder_params={"name": "test_resnet"})
    with pytest.raises(ValueError, match="num_channels and num_blocks do not apply"):
        create_model("dpt", num_channels=8)


@pytest.mark.parametrize("arch", ["Unet", "FPNUnet", "UPerNet", "DeepLabV3Plus"])
def test_pyramid_architectures_refuse_a_vit_in_one_line(arch):
    with pytest.raises(ValueError) as info:
        getattr(segzoo, arch)(encoder=TimmEncoder("test_vit"))
    message = str(info.value)
    assert message.startswith(f"{arch} needs a multi-scale encoder") and "\n" not in message
    assert message.endswith("ViTEncoder has one stride [16, 16, 16, 16]; use DPT for a plain ViT")


def test_onnx_export_runs_at_other_sizes_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from segzoo.export.onnx import export_onnx

    model = _scaled(DPT(num_classes=2, encoder=TimmEncoder("test_vit2")))
    for opset in (17, 18):
        path = export_onnx(model, tmp_path / f"dpt{opset}.onnx", torch.rand(1, 3, 64, 64), opset=opset)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for b, h, w in [(2, 96, 48), (1, 37, 81), (1, 160, 160)]:  # 160: the ViT's own grid (no resize in eager)
            x = torch.rand(b, 3, h, w)
            with torch.no_grad():
                ref = model(x).numpy()
            got = session.run(None, {"input": x.numpy()})[0]
            assert got.shape == ref.shape == (b, 2, h, w)
            assert ref.std() > 0.3
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"opset {opset}, input {(b, h, w)}")


def test_torchscript_trace_and_torch_export_match_eager_at_other_sizes():
    model = _scaled(tiny_model("dpt"))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(1, 3, 64, 64), check_trace=False)
    m = model.size_multiple
    dims = {0: Dim("batch", min=1, max=64), 2: Dim("h", min=2, max=4096 // m) * m, 3: Dim("w", min=2, max=4096 // m) * m}
    with torch.no_grad():
        program = torch.export.export(model, (torch.rand(2, 3, 64, 64),), dynamic_shapes={"x": dims}).module()
        for b, h, w in [(2, 37, 53), (1, 96, 64)]:
            x = torch.rand(b, 3, h, w)
            torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=1e-4)
            if h % m == 0 and w % m == 0:
                torch.testing.assert_close(program(x), model(x), atol=1e-5, rtol=1e-4)


def test_dpt_needs_fewer_flops_than_smp_dpt_on_the_same_vit():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model, size=224):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.rand(1, 3, size, size))
        return counter.get_total_flops()

    theirs = smp.DPT(encoder_name="tu-vit_tiny_patch16_224", encoder_weights=None, classes=2,
                     dynamic_img_size=True)
    ours = DPT(num_classes=2, encoder_params={"name": "vit_tiny_patch16_224"})
    assert flops(ours) <= flops(theirs)
    assert sum(p.numel() for p in ours.parameters()) <= sum(p.numel() for p in theirs.parameters())


def _dpt_config(tmp_path, encoder_params):
    import yaml

    cfg = {"seed": 3, "logdir": str(tmp_path / "run"),
           "model": {"name": "dpt", "params": {"num_classes": 1, "encoder_params": encoder_params}},
           "data": {"kind": "procedural", "params": {"image_size": 48, "num_classes": 1},
                    "train_size": 8, "valid_size": 4, "batch_size": 4},
           "loss": {"name": "BCEDiceLoss"}, "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
           "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}], "num_epochs": 1,
           "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"}}
    path = tmp_path / "dpt.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_segzoo_train_runs_a_dpt_config_and_rebuilds_it(tmp_path):
    from segzoo.checkpoint import load_checkpoint
    from segzoo.cli import main
    from segzoo.models import model_from_spec

    assert main(["train", "--config", str(_dpt_config(tmp_path, TINY_VIT))]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")
    assert ckpt["model_spec"] == {"name": "dpt", "kwargs": {"encoder_params": TINY_VIT}}
    model = model_from_spec(ckpt["model_spec"])
    assert isinstance(model, DPT) and isinstance(model.encoder, ViTEncoder)
    model.load_state_dict(ckpt["model_state_dict"])


def test_segzoo_train_with_a_cnn_for_dpt_is_one_line_exit_2(tmp_path, capsys):
    from segzoo.cli import main

    assert main(["train", "--config", str(_dpt_config(tmp_path, {"name": "test_resnet"}))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'test_resnet' is not a plain ViT" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
