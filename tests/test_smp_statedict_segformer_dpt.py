"""Issue 22 point 3: smp 0.6's Segformer and DPT weights, and smp's timm ("tu-...") and MiT encoders, load into
segzoo (``segzoo.smp.from_smp`` / ``load_smp_state_dict`` onto ``structure="smp"`` models)."""

import warnings

import pytest
import torch

import segzoo.smp as zsmp
from segzoo.errors import CheckpointError

smp = pytest.importorskip("segmentation_models_pytorch")

SIZES = [(2, 3, 64, 64), (1, 3, 96, 160)]  # square, and non-square (smp needs multiples of 32)
VIT_SIZES = [(2, 3, 160, 160)]  # timm's test_vit takes its img_size only in smp (no dynamic_img_size)


def _smp(cls, *args, sizes=SIZES, seed=0, **kwargs):
    """A random smp model in eval mode whose BatchNorm statistics are a batch's, then perturbed: activations stay
    O(1) as in a trained model (float rounding then stays far below 1e-5) and a wrong mapping of any statistic shows."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # smp's DPT warns about readouts without prefix tokens
        model = getattr(smp, cls)(*args, encoder_weights=None, **kwargs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: the batch's statistics
    model.train()
    with torch.no_grad():
        shape = (4, kwargs.get("in_channels", 3), *sizes[0][2:])
        model(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
        for norm in norms:
            norm.running_mean.add_(torch.empty_like(norm.running_mean).uniform_(-0.3, 0.3)
                                   * norm.running_var.sqrt())
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.7, 1.3))
            norm.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _assert_same_outputs(reference, twin, sizes=SIZES):
    twin.eval()
    for shape in sizes:
        shape = (shape[0], twin.in_channels, *shape[2:])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, got = reference(x), twin(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.shape == e.shape
            assert (g - e).abs().max().item() <= 1e-5, (shape, (g - e).abs().max().item())


AUX = {"classes": 4, "pooling": "max", "dropout": 0.3, "activation": "sigmoid"}


@pytest.mark.parametrize(("encoder", "kwargs"), [
    ("resnet18", {}), ("resnet34", {"encoder_depth": 4, "decoder_segmentation_channels": 64}),
    ("resnet50", {"encoder_depth": 3, "decoder_segmentation_channels": 32, "in_channels": 1}),
    ("resnet18", {"aux_params": AUX, "activation": "softmax2d"}),
    ("mit_b0", {}), ("mit_b0", {"decoder_segmentation_channels": 48, "aux_params": AUX}),
    ("tu-test_resnet", {"encoder_depth": 4}), ("tu-test_convnext", {})],
    ids=["r18", "r34-depth4-w64", "r50-depth3-gray", "r18-aux-softmax", "mit_b0", "mit_b0-w48-aux", "tu-test_resnet",
         "tu-test_convnext"])
def test_segformer_gives_smps_outputs(encoder, kwargs):
    reference = _smp("Segformer", encoder, classes=3, **kwargs)
    twin = zsmp.from_smp(reference)
    assert isinstance(twin, zsmp.Segformer) and twin.structure == "smp" and not twin.training
    _assert_same_outputs(reference, twin)


@pytest.mark.parametrize(("encoder", "kwargs"), [
    ("tu-test_resnet", {}), ("tu-resnet18", {"encoder_depth": 4, "decoder_channels": (64, 32, 16, 16)}),
    ("tu-test_efficientnet", {"aux_params": AUX})], ids=["tu-test_resnet", "tu-resnet18-depth4", "tu-effnet-aux"])
def test_unet_on_smps_timm_encoders_gives_smps_outputs(encoder, kwargs):
    reference = _smp("Unet", encoder, classes=2, **kwargs)
    _assert_same_outputs(reference, zsmp.from_smp(reference))


@pytest.mark.parametrize("kwargs", [
    {}, {"decoder_readout": "add"},
    {"decoder_readout": "ignore", "encoder_depth": 2, "encoder_output_indices": [1, -1],
     "decoder_intermediate_channels": (8, 16), "decoder_fusion_channels": 32, "aux_params": AUX},
    {"encoder_depth": 3, "decoder_intermediate_channels": (16, 32, 64), "in_channels": 2, "activation": "sigmoid"}],
    ids=["cat", "add", "ignore-depth2-indices-aux", "depth3-2ch-sigmoid"])
def test_dpt_gives_smps_outputs(kwargs):
    reference = _smp("DPT", "tu-test_vit", classes=3, sizes=VIT_SIZES, **kwargs)
    twin = zsmp.from_smp(reference)
    assert isinstance(twin, zsmp.DPT) and twin.structure == "smp"
    _assert_same_outputs(reference, twin, VIT_SIZES)


def test_state_dicts_tell_the_class_and_arguments():
    for encoder, kwargs in (("resnet34", {"encoder_depth": 4, "decoder_segmentation_channels": 64}), ("mit_b0", {})):
        reference = _smp("Segformer", encoder, classes=3, **kwargs)
        twin = zsmp.from_smp(reference.state_dict())  # class, encoder, depth, width, classes from the keys
        assert isinstance(twin, zsmp.Segformer) and twin.smp_arguments["encoder_name"] == encoder
        _assert_same_outputs(reference, twin)
        _assert_same_outputs(reference, zsmp.from_smp(reference.state_dict(), arch="segformer"))
    dpt = _smp("DPT", "tu-test_vit", classes=3, sizes=VIT_SIZES, encoder_depth=3,
               decoder_intermediate_channels=(16, 32, 64))
    twin = zsmp.from_smp(dpt.state_dict(), encoder_name="tu-test_vit")  # timm's name is not in the keys
    assert isinstance(twin, zsmp.DPT) and twin.smp_arguments["decoder_intermediate_channels"] == [16, 32, 64]
    _assert_same_outputs(dpt, twin, VIT_SIZES)
    unet = _smp("Unet", "tu-test_resnet", classes=2)
    _assert_same_outputs(unet, zsmp.from_smp(unet.state_dict(), encoder_name="tu-test_resnet"))


def test_load_smp_state_dict_into_structured_models(tmp_path):
    reference = _smp("Segformer", "resnet18", classes=3)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "segformer.pth")
    model = zsmp.Segformer("resnet18", encoder_weights=None, classes=3, structure="smp")
    model.set_layout(False)
    assert zsmp.load_smp_state_dict(model, tmp_path / "segformer.pth") is model
    _assert_same_outputs(reference, model)
    dpt = _smp("DPT", "tu-test_vit", classes=3, sizes=VIT_SIZES, decoder_readout="add")
    model = zsmp.DPT("tu-test_vit", encoder_weights=None, classes=3, decoder_readout="add", structure="smp")
    model.set_layout(False)
    _assert_same_outputs(dpt, zsmp.load_smp_state_dict(model, dpt.state_dict()), VIT_SIZES)


def _one_line_error(source, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        zsmp.from_smp(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_other_architectures_and_encoders_name_the_first_key_that_does_not_map():
    segformer = _smp("Segformer", "resnet18", classes=3).state_dict()
    _one_line_error(segformer, r"smp DPT key 'decoder\.mlp_stage\.", arch="DPT")
    _one_line_error(_smp("DPT", "tu-test_vit", sizes=VIT_SIZES).state_dict(),
                    r"smp Segformer key 'decoder\.projection_blocks\.0\.", arch="Segformer", encoder_name="tu-test_vit")
    msg = _one_line_error(smp.Segformer("mobilenet_v2", encoder_weights=None), r"'encoder\.features\.0\.0\.weight'")
    assert "Segformer" in msg and "DPT" in msg  # what does map
    # smp's DPT aux head reads the raw token map: segzoo's reads it after the readout
    _one_line_error(_smp("DPT", "tu-test_vit", sizes=VIT_SIZES, aux_params={"classes": 2}),
                    r"'classification_head\.3\.weight'.*decoder_readout='ignore'")


def test_weights_that_do_not_fit_are_one_line():
    segformer = _smp("Segformer", "resnet18", classes=3).state_dict()
    _one_line_error(segformer, "missing|unexpected", encoder_name="resnet34")  # another encoder's blocks
    _one_line_error(segformer, "shape mismatch", decoder_segmentation_channels=128)
    bad = dict(segformer)
    del bad["decoder.fuse_stage.1.running_var"]
    _one_line_error(bad, "missing.*decoder.fuse.1.running_var")
    bad = {**segformer, "decoder.mlp_stage.9.linear.weight": torch.zeros(256, 3)}  # renumbering must not invent keys
    _one_line_error(bad, r"'decoder\.mlp_stage\.9\.linear\.weight'.*without gaps")
    dpt = _smp("DPT", "tu-test_vit", sizes=VIT_SIZES, decoder_readout="add").state_dict()
    _one_line_error(dpt, "no 'cat' readout projection.*pass their decoder_readout", encoder_name="tu-test_vit")
    _one_line_error(dpt, "the keys do not tell the encoder's name.*encoder_name='tu-")
    _one_line_error(_smp("Unet", "tu-test_resnet").state_dict(), "the keys do not tell the encoder's name")


def test_structure_smp_refuses_encoders_it_cannot_compute():
    with pytest.raises(ValueError, match=r"structure='smp' needs a ResNet encoder.*or a timm CNN"):
        zsmp.Unet("mit_b0", encoder_weights=None, structure="smp")
    with pytest.raises(ValueError, match="strides 2, 4 ... 32.*test_convnext"):
        zsmp.Unet("tu-test_convnext", encoder_weights=None, structure="smp")
    with pytest.raises(ValueError, match="timm plain ViT"):
        zsmp.DPT("resnet18", encoder_weights=None, structure="smp")
    with pytest.raises(ValueError, match="encoder_weights=None"):
        zsmp.Segformer("mit_b0", structure="smp")  # segzoo downloads no MiT weights
    with pytest.raises(KeyError, match="unknown timm model 'nope_net'"):
        zsmp.Segformer("tu-nope_net", encoder_weights=None, structure="smp")
    with pytest.raises(ValueError, match="upsampling"):
        zsmp.Segformer("resnet18", encoder_weights=None, upsampling=2, structure="smp")


def test_new_part_options_keep_segzoos_defaults():
    from segzoo.decoders.dpt import DPTDecoder
    from segzoo.decoders.segformer import SegformerDecoder
    from segzoo.heads import UnetHead

    default = DPTDecoder([32] * 4, [16] * 4, channels=(8, 8, 8, 8), fusion_channels=16)
    assert not any(k.startswith("last_project") for k in default.state_dict()) and default.out_strides == [4]
    smp_like = DPTDecoder([32] * 4, [16] * 4, channels=(8, 8, 8, 8), fusion_channels=16, upsample_last=True)
    assert smp_like.out_strides == [2]
    assert smp_like([torch.zeros(1, 32, 4, 4)] * 4)[0].shape == (1, 16, 32, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        DPTDecoder([32] * 4, [4] * 4, upsample_last=True)
    seg = SegformerDecoder([8, 16, 32], [2, 4, 8], channels=8, min_stride=2, fuse="concat", out_stride=4)
    assert seg.out_strides == [4]
    assert seg([torch.zeros(1, 8, 16, 16), torch.zeros(1, 16, 8, 8), torch.zeros(1, 32, 4, 4)])[0].shape == (1, 8, 8, 8)
    assert SegformerDecoder([8, 16, 32], [2, 4, 8], channels=8).out_strides == [4]
    with pytest.raises(ValueError, match="out_stride must be one of the used strides"):
        SegformerDecoder([8, 16, 32], [2, 4, 8], channels=8, out_stride=2)
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    plain, corners = UnetHead([1], 1, [2]).upsample, UnetHead([1], 1, [2], align_corners=True).upsample
    assert abs(corners(x)[0, 0, 0, 1].item() - 1 / 3) < 1e-6 and plain(x)[0, 0, 0, 1].item() == 0.25
