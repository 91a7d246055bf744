"""Issue 22 point 3: smp 0.6's UnetPlusPlus, MAnet and UPerNet weights load into segzoo (``structure="smp"``)."""

import pytest
import torch

import segzoo.smp as zsmp
from segzoo.errors import CheckpointError

smp = pytest.importorskip("segmentation_models_pytorch")

SIZES = [(2, 3, 64, 64), (1, 3, 96, 160)]  # square, and non-square (smp needs multiples of 32)


def _smp_model(arch, encoder="resnet18", **kwargs):
    """A random smp model in eval mode, with non-trivial BatchNorm statistics and LayerNorm affines."""
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=3, **kwargs)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _assert_same_outputs(reference, twin):
    twin.eval()
    for shape in SIZES:
        shape = (shape[0], twin.in_channels, *shape[2:])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, got = reference(x), twin(x)
        expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.shape == e.shape
            assert (g - e).abs().max().item() <= 1e-5


CASES = [
    ("UnetPlusPlus", "resnet18", {}),
    ("UnetPlusPlus", "resnet34", {"encoder_depth": 4, "decoder_channels": (64, 32, 32, 16)}),
    ("UnetPlusPlus", "resnet18", {"decoder_use_norm": "identity", "decoder_interpolation": "bilinear",
                                  "activation": "sigmoid"}),
    ("UnetPlusPlus", "resnet50", {"encoder_depth": 3, "decoder_channels": (32, 16, 16), "in_channels": 1}),
    ("MAnet", "resnet18", {}),
    ("MAnet", "resnet34", {"encoder_depth": 4, "decoder_channels": (64, 32, 32, 16), "decoder_pab_channels": 16}),
    ("MAnet", "resnet18", {"decoder_use_norm": "identity", "decoder_interpolation": "bilinear",
                           "decoder_channels": (32, 16, 16), "encoder_depth": 3}),
    ("UPerNet", "resnet18", {}),
    ("UPerNet", "resnet34", {"encoder_depth": 4, "decoder_channels": 64}),
    ("UPerNet", "resnet18", {"decoder_use_norm": "identity", "decoder_channels": 32, "encoder_depth": 3}),
]
IDS = ["upp-r18", "upp-r34-depth4", "upp-r18-nonorm-bilinear-sigmoid", "upp-r50-depth3-gray", "manet-r18",
       "manet-r34-depth4-pab16", "manet-r18-nonorm-bilinear-depth3", "upernet-r18", "upernet-r34-depth4-64",
       "upernet-r18-nonorm-depth3"]


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), CASES, ids=IDS)
def test_from_smp_model_and_state_dict_give_smps_outputs(arch, encoder, kwargs):
    reference = _smp_model(arch, encoder, **kwargs)
    twin = zsmp.from_smp(reference)
    assert isinstance(twin, getattr(zsmp, arch)) and twin.structure == "smp" and not twin.training
    _assert_same_outputs(reference, twin)
    # from the state dict: the class, encoder, depth, widths, norm, pab channels, in_channels and classes are
    # in the keys; the interpolation and activation are not
    given = {k: kwargs[k] for k in ("decoder_interpolation", "activation") if k in kwargs}
    twin = zsmp.from_smp(reference.state_dict(), **given)
    assert type(twin).__name__ == arch and twin.smp_arguments["encoder_name"] == encoder
    _assert_same_outputs(reference, twin)


@pytest.mark.parametrize("arch", ["UnetPlusPlus", "MAnet", "UPerNet"])
def test_arch_in_any_case_keeps_the_arguments_the_keys_tell(arch):
    kwargs = {"decoder_channels": 64} if arch == "UPerNet" else {"decoder_channels": (64, 32, 32, 16)}
    reference = _smp_model(arch, encoder_depth=4, **kwargs)
    twin = zsmp.from_smp(reference.state_dict(), arch=arch.lower())
    assert twin.smp_arguments["encoder_depth"] == 4
    _assert_same_outputs(reference, twin)


@pytest.mark.parametrize("arch", ["UnetPlusPlus", "MAnet", "UPerNet"])
def test_aux_params_masks_and_labels_equal(arch):
    reference = _smp_model(arch, "resnet18", aux_params={"classes": 4, "dropout": 0.5})
    _assert_same_outputs(reference, zsmp.from_smp(reference))
    twin = zsmp.from_smp(reference.state_dict())  # the label head's classes are in the keys
    assert twin.smp_arguments["aux_params"]["classes"] == 4
    _assert_same_outputs(reference, twin)


@pytest.mark.parametrize("arch", ["UnetPlusPlus", "MAnet", "UPerNet"])
def test_load_smp_state_dict_into_an_smp_structured_model(arch):
    reference = _smp_model(arch, "resnet34")
    model = getattr(zsmp, arch)("resnet34", encoder_weights=None, classes=3, structure="smp")
    model.set_layout(False)
    assert zsmp.load_smp_state_dict(model, reference.state_dict()) is model
    _assert_same_outputs(reference, model)


def _one_line_error(source, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        zsmp.from_smp(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_another_architecture_or_encoder_names_the_first_key():
    upp = _smp_model("UnetPlusPlus").state_dict()
    msg = _one_line_error(upp, "smp MAnet key 'decoder.blocks.x_0_0.conv1.0.weight' does not map", arch="MAnet")
    assert "UPerNet" in msg and "UnetPlusPlus" in msg  # what does map
    _one_line_error(_smp_model("MAnet").state_dict(), "smp UPerNet key 'decoder.center.top_conv.weight'",
                    arch="UPerNet")
    _one_line_error(_smp_model("UPerNet").state_dict(), "smp UnetPlusPlus key 'decoder.feature_norms.0.weight'",
                    arch="UnetPlusPlus")
    _one_line_error(smp.MAnet("mobilenet_v2", encoder_weights=None), "'encoder.features.0.0.weight'")
    _one_line_error(smp.UnetPlusPlus("resnet18", encoder_weights=None, decoder_attention_type="scse"),
                    "'decoder.blocks.x_0_0.attention1.attention.cSE.1.weight'.*scse")
    sd = smp.UPerNet("resnet18", encoder_weights=None, decoder_use_norm="layernorm").state_dict()
    _one_line_error(sd, "'decoder.fusion_block.1.weight'.*neither 'batchnorm' nor 'identity'")


def test_a_missing_key_or_a_wrong_shape_is_one_line():
    for arch in ("UnetPlusPlus", "MAnet", "UPerNet"):
        sd = _smp_model(arch).state_dict()
        missing = {k: v for k, v in sd.items() if "conv2" not in k and "fpn_conv_blocks.1." not in k}
        msg = _one_line_error(missing, "missing", arch=arch)
        assert arch in msg
        _one_line_error(sd, "shape mismatch", arch=arch, classes=5)


def test_structure_smp_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="decoder_attention_type='scse' is not"):
        zsmp.UnetPlusPlus("resnet18", encoder_weights=None, decoder_attention_type="scse", structure="smp")
    with pytest.raises(ValueError, match="decoder_channels .* one width per encoder stage"):
        zsmp.MAnet("resnet18", encoder_weights=None, decoder_channels=(32, 16), structure="smp")
    with pytest.raises(ValueError, match="encoder_depth must be >= 3"):
        zsmp.UPerNet("resnet18", encoder_weights=None, encoder_depth=2, structure="smp")
    with pytest.raises(ValueError, match="decoder_use_norm='layernorm' is not"):
        zsmp.UPerNet("resnet18", encoder_weights=None, decoder_use_norm="layernorm", structure="smp")


def test_structure_survives_save_pretrained(tmp_path):
    reference = _smp_model("MAnet", decoder_pab_channels=16)
    zsmp.from_smp(reference).save_pretrained(tmp_path / "twin")
    again = zsmp.from_pretrained(tmp_path / "twin")
    again.set_layout(False)
    assert again.structure == "smp"
    _assert_same_outputs(reference, again)


def test_segzoo_structure_and_decoder_defaults_are_unchanged():
    from segzoo.decoders import create_decoder

    channels, strides = [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]
    keys = {name: sorted(create_decoder(name, channels, strides).state_dict()) for name in
            ("unetplusplus", "manet", "upernet")}
    assert all(".same." in k or ".deep." in k or ".block." in k for k in keys["unetplusplus"])
    assert "reduce.0.weight" in keys["manet"] and "attention.value.weight" in keys["manet"]
    assert not any(k.startswith("feature_norms") for k in keys["upernet"]) and "fuse_norm.weight" in keys["upernet"]
    for arch in ("UnetPlusPlus", "MAnet", "UPerNet"):  # structure="segzoo" (default): segzoo's own decoders
        model = getattr(zsmp, arch)("resnet18", encoder_weights=None, classes=2)
        assert model.structure == "segzoo"
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_segzoo_structure_maps_smps_decoder_arguments():
    manet = zsmp.MAnet("resnet18", encoder_weights=None, decoder_channels=(96, 64, 48, 32, 16),
                       decoder_pab_channels=32, decoder_use_norm="identity")
    assert manet.decoder.out_channels == [48, 64, 96, 256] and manet.decoder.attention.key.out_channels == 32
    upp = zsmp.UnetPlusPlus("resnet18", encoder_weights=None, decoder_channels=(128, 64, 32, 16, 16))
    assert upp.decoder.out_channels == [16, 32, 64, 128]
    upernet = zsmp.UPerNet("resnet18", encoder_weights=None, decoder_use_norm="identity")
    assert isinstance(upernet.decoder.laterals[0][1], torch.nn.Identity)


def test_old_spelling_crafted_shapes_and_dict_norms_are_one_line():
    with pytest.warns(DeprecationWarning):
        reference = _smp_model("MAnet", decoder_use_batchnorm=False)  # smp's older spelling: no norm
    _assert_same_outputs(reference, zsmp.from_smp(reference))
    _one_line_error({"decoder.fusion_block.0.weight": torch.tensor(1.0), "decoder.psp.out_conv.0.weight": torch.ones(1)},
                    "'decoder.fusion_block.0.weight' has shape \\(\\): not a layer's weight")
    _one_line_error({"decoder.blocks.x_0_0.conv1.0.weight": torch.tensor(2.0)}, "'decoder.blocks.x_0_0.conv1.0")
    with pytest.raises(ValueError, match="decoder_use_norm=\\{'type': 'batchnorm'\\} is not supported"):
        zsmp.UPerNet("resnet18", encoder_weights=None, decoder_use_norm={"type": "batchnorm"}, structure="smp")
