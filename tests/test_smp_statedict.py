"""Issue 22 point 3: smp 0.6 checkpoints load into segzoo (``segzoo.smp.from_smp`` / ``load_smp_state_dict``)."""

import pytest
import torch

import segzoo.smp as zsmp
from segzoo.errors import CheckpointError

smp = pytest.importorskip("segmentation_models_pytorch")

SIZES = [(2, 3, 64, 64), (1, 3, 96, 160)]  # square, and non-square (smp needs multiples of 32)


def _smp_unet(encoder="resnet18", seed=0, **kwargs):
    """A random smp Unet in eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = smp.Unet(encoder, encoder_weights=None, classes=3, **kwargs)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _assert_same_outputs(reference, twin):
    twin.eval()
    for shape in SIZES:
        shape = (shape[0], twin.in_channels, *shape[2:])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, got = reference(x), twin(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("encoder", "kwargs"), [
    ("resnet18", {}), ("resnet34", {}), ("resnet34", {"encoder_depth": 4, "decoder_channels": (64, 32, 32, 16)}),
    ("resnet18", {"encoder_depth": 3, "decoder_channels": (32, 16, 16), "in_channels": 1}),
    ("resnet18", {"decoder_use_norm": "identity", "decoder_interpolation": "bilinear", "activation": "sigmoid"})],
    ids=["r18", "r34", "r34-depth4", "r18-depth3-gray", "r18-nonorm-bilinear-sigmoid"])
def test_from_smp_model_gives_smps_outputs(encoder, kwargs):
    reference = _smp_unet(encoder, **kwargs)
    twin = zsmp.from_smp(reference)
    assert isinstance(twin, zsmp.Unet) and twin.structure == "smp" and not twin.training
    _assert_same_outputs(reference, twin)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_from_smp_state_dict_reads_the_arguments_from_the_keys(encoder):
    reference = _smp_unet(encoder, encoder_depth=4, decoder_channels=(64, 32, 32, 16))
    twin = zsmp.from_smp(reference.state_dict())  # arch, encoder, depth, widths, classes from the keys
    assert twin.smp_arguments["encoder_name"] == encoder and twin.smp_arguments["classes"] == 3
    _assert_same_outputs(reference, twin)


def test_bilinear_is_an_argument_not_in_the_keys():
    reference = _smp_unet(decoder_interpolation="bilinear")
    _assert_same_outputs(reference, zsmp.from_smp(reference.state_dict(), "unet", decoder_interpolation="bilinear"))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "lightning"])
def test_training_script_files_load(tmp_path, wrap):
    reference = _smp_unet()
    sd = {f"module.{k}": v for k, v in reference.state_dict().items()}  # saved from DDP
    obj = {"state_dict": sd, "epoch": 3} if wrap == "state_dict" else {"model": sd, "optimizer": {}} \
        if wrap == "model" else {"state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "smp.pth"
    torch.save(obj, path)
    _assert_same_outputs(reference, zsmp.from_smp(path))


def test_load_smp_state_dict_into_an_smp_structured_model():
    reference = _smp_unet("resnet34")
    model = zsmp.Unet("resnet34", encoder_weights=None, classes=3, structure="smp")
    model.set_layout(False)
    assert zsmp.load_smp_state_dict(model, reference.state_dict()) is model
    _assert_same_outputs(reference, model)
    with pytest.raises(ValueError, match="structure='smp'"):
        zsmp.load_smp_state_dict(zsmp.Unet("resnet34", encoder_weights=None, classes=3), reference.state_dict())


def test_segzoo_layout_agrees_within_rounding():
    reference = _smp_unet()
    twin = zsmp.from_smp(reference)
    twin.set_layout("auto")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), reference(x), rtol=1e-5, atol=1e-4)


def _one_line_error(source, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        zsmp.from_smp(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_architectures_and_encoders_that_do_not_map_name_the_first_key():
    fpn = smp.FPN("resnet18", encoder_weights=None).state_dict()
    assert "Unet" in _one_line_error(fpn, "'decoder.p5.weight'", arch="Unet")  # another architecture's keys
    _one_line_error(smp.Unet("mobilenet_v2", encoder_weights=None), "'encoder.features.0.0.weight'")
    _one_line_error(smp.Unet("resnet18", encoder_weights=None, decoder_attention_type="scse"),
                    "'decoder.blocks.0.attention1.attention.cSE.1.weight'")
    with pytest.raises(ValueError, match="structure='smp'.*encoder_depth=4 is not available"):
        zsmp.FPN("resnet18", encoder_weights=None, encoder_depth=4, structure="smp")


def test_weights_that_do_not_fit_the_given_arguments_are_one_line():
    sd = _smp_unet().state_dict()
    msg = _one_line_error(sd, "shape mismatch", decoder_channels=(128, 64, 32, 16, 16))
    assert "decoder_channels" not in msg or "arguments must match" in msg
    with pytest.raises(CheckpointError, match="not an smp state dict"):
        zsmp.from_smp({"state_dict": {"a": 1}})


def test_structure_survives_save_pretrained(tmp_path):
    reference = _smp_unet()
    twin = zsmp.from_smp(reference)
    twin.save_pretrained(tmp_path / "twin")
    again = zsmp.from_pretrained(tmp_path / "twin")
    again.set_layout(False)
    assert again.structure == "smp"
    _assert_same_outputs(reference, again)


def test_a_decoder_norm_without_twin_names_its_key():
    sd = smp.Unet("resnet18", encoder_weights=None, decoder_use_norm="layernorm").state_dict()
    _one_line_error(sd, "'decoder.blocks.0.conv1.1.weight'.*neither 'batchnorm' nor 'identity'")


def test_unet_head_options_keep_the_default_and_check_values():
    from segzoo.heads import UnetHead

    default = UnetHead([32], 3, [2], num_upsample_blocks=1)
    assert [k for k in default.state_dict() if k.endswith("weight")] == [
        "blocks.1.0.weight", "blocks.1.1.weight", "classifier.weight"]  # segzoo's own layout, unchanged
    assert default.classifier.kernel_size == (1, 1) and default.blocks[1][0].out_channels == 16
    smp_like = UnetHead([32], 3, [2], num_upsample_blocks=1, block_channels=16, block_convs=2, kernel_size=3)
    assert smp_like([torch.zeros(1, 32, 8, 8)]).shape == (1, 3, 16, 16) and len(smp_like.blocks) == 3
    for bad in ({"block_convs": 0}, {"kernel_size": 2}):
        with pytest.raises(ValueError, match="block_convs must be"):
            UnetHead([32], 3, [2], **bad)
