"""Issue 22 point 3: smp 0.6's Linknet, FPN and PSPNet weights load into segzoo (``structure="smp"``)."""

import pytest
import torch

import segzoo.smp as zsmp
from segzoo.errors import CheckpointError

smp = pytest.importorskip("segmentation_models_pytorch")

# 64x64, a non-square size and the smallest size smp accepts (multiples of 32; PSPNet's depth 3: of 8)
SIZES = {"Linknet": [(2, 64, 64), (1, 96, 160), (1, 32, 32)], "FPN": [(2, 64, 64), (1, 96, 160), (1, 32, 32)],
         "PSPNet": [(2, 64, 64), (1, 40, 72), (1, 8, 8)]}
AUX = {"classes": 4, "pooling": "max", "dropout": 0.3, "activation": "sigmoid"}


def _smp(arch, encoder="resnet18", seed=0, **kwargs):
    """A random smp model in eval mode, with non-trivial BatchNorm statistics; the decoder's and heads' norm
    scales and biases are random too (smp initializes them to 1 and 0: a dropped one would not show)."""
    torch.manual_seed(seed)
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=kwargs.pop("classes", 3), **kwargs)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
            if name.startswith("encoder"):
                continue
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)) \
                    and mod.bias is not None:
                mod.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _assert_same_outputs(arch, reference, twin):
    twin.eval()
    for b, h, w in SIZES[arch]:
        x = torch.randn(b, twin.in_channels, h, w, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, got = reference(x), twin(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.shape == e.shape
            # PSP pools as matrix products (segzoo's exportable form of adaptive_avg_pool2d, equal within float
            # rounding: bit-equal with smp's pooling swapped in); on logits of tens that is ~1e-5 (~3 ulp)
            slack = 1e-6 * e.abs().max().item() if arch == "PSPNet" else 0.0
            assert (g - e).abs().max().item() <= 1e-5 + slack


CASES = [
    ("Linknet", "resnet18", {}), ("Linknet", "resnet34", {}),
    ("Linknet", "resnet18", {"encoder_depth": 3, "decoder_use_norm": "identity", "in_channels": 1,
                             "activation": "sigmoid"}),
    ("FPN", "resnet18", {}), ("FPN", "resnet34", {}),
    ("FPN", "resnet18", {"decoder_merge_policy": "cat", "decoder_interpolation": "bilinear",
                         "decoder_pyramid_channels": 64, "decoder_segmentation_channels": 64, "decoder_dropout": 0.5}),
    ("PSPNet", "resnet18", {}), ("PSPNet", "resnet34", {}), ("PSPNet", "resnet50", {}),
    ("PSPNet", "resnet18", {"psp_out_channels": 64, "decoder_use_norm": "identity", "psp_dropout": 0.5}),
]
IDS = ["link-r18", "link-r34", "link-r18-depth3-nonorm-gray", "fpn-r18", "fpn-r34", "fpn-r18-cat-bilinear-narrow",
       "psp-r18", "psp-r34", "psp-r50", "psp-r18-narrow-nonorm"]


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), CASES, ids=IDS)
def test_from_smp_model_gives_smps_outputs(arch, encoder, kwargs):
    reference = _smp(arch, encoder, **kwargs)
    twin = zsmp.from_smp(reference)
    assert type(twin).__name__ == arch and twin.structure == "smp" and not twin.training
    _assert_same_outputs(arch, reference, twin)


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), [CASES[i] for i in (1, 2, 5, 7, 9)],
                         ids=[IDS[i] for i in (1, 2, 5, 7, 9)])
def test_from_smp_state_dict_reads_class_and_arguments_from_the_keys(arch, encoder, kwargs):
    reference = _smp(arch, encoder, **kwargs)
    extra = {"decoder_interpolation": "bilinear"} if "decoder_interpolation" in kwargs else {}  # not in the keys
    extra.update({"activation": kwargs["activation"]} if "activation" in kwargs else {})  # neither
    twin = zsmp.from_smp(reference.state_dict(), **extra)
    assert type(twin).__name__ == arch
    assert twin.smp_arguments["encoder_name"] == encoder and twin.smp_arguments["classes"] == 3
    for key in ("encoder_depth", "decoder_use_norm", "decoder_merge_policy", "psp_out_channels",
                "decoder_segmentation_channels", "decoder_pyramid_channels"):
        if key in kwargs:
            assert twin.smp_arguments[key] == kwargs[key]
    _assert_same_outputs(arch, reference, twin)


@pytest.mark.parametrize("arch", ["Linknet", "FPN", "PSPNet"])
def test_aux_params_masks_and_labels_equal(arch):
    reference = _smp(arch, aux_params=AUX)
    _assert_same_outputs(arch, reference, zsmp.from_smp(reference))
    twin = zsmp.from_smp(reference.state_dict(), arch=arch.lower(), aux_params=AUX)  # any case, as smp
    _assert_same_outputs(arch, reference, twin)
    assert zsmp.from_smp(reference.state_dict()).smp_arguments["aux_params"]["classes"] == 4  # from the keys


@pytest.mark.parametrize("arch", ["Linknet", "FPN", "PSPNet"])
def test_load_smp_state_dict_into_an_smp_structured_model(arch):
    reference = _smp(arch, "resnet34")
    model = getattr(zsmp, arch)("resnet34", encoder_weights=None, classes=3, structure="smp")
    model.set_layout(False)
    assert zsmp.load_smp_state_dict(model, reference.state_dict()) is model
    _assert_same_outputs(arch, reference, model)


def test_older_psp_use_batchnorm_spelling():
    with pytest.warns(DeprecationWarning):
        reference = _smp("PSPNet", psp_use_batchnorm=False)
    twin = zsmp.PSPNet("resnet18", encoder_weights=None, classes=3, psp_use_batchnorm=False, structure="smp")
    assert twin.smp_arguments["decoder_use_norm"] is False
    zsmp.load_smp_state_dict(twin, reference.state_dict())
    twin.set_layout(False)
    _assert_same_outputs("PSPNet", reference, twin)


def test_structure_survives_save_pretrained(tmp_path):
    reference = _smp("FPN", decoder_merge_policy="cat", decoder_segmentation_channels=64)
    zsmp.from_smp(reference).save_pretrained(tmp_path / "twin")
    again = zsmp.from_pretrained(tmp_path / "twin")
    again.set_layout(False)
    assert again.structure == "smp" and again.smp_arguments["decoder_merge_policy"] == "cat"
    _assert_same_outputs("FPN", reference, again)


def _one_line_error(source, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        zsmp.from_smp(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_another_architecture_or_encoder_names_the_first_key_that_does_not_map():
    linknet = _smp("Linknet").state_dict()
    msg = _one_line_error(linknet, r"smp FPN key 'decoder\.blocks\.0\.block\.0\.0\.weight' does not map", arch="FPN")
    assert "Linknet" in msg and "PSPNet" in msg  # what does map
    _one_line_error(_smp("PSPNet").state_dict(), r"smp Linknet key 'decoder\.psp\.blocks\.0\.", arch="Linknet")
    _one_line_error(_smp("FPN").state_dict(), r"smp PSPNet key 'decoder\.p5\.weight'", arch="PSPNet")
    _one_line_error(smp.Linknet("mobilenet_v2", encoder_weights=None), r"'encoder\.features\.0\.0\.weight'")


def test_other_encoder_missing_key_and_wrong_shape_are_one_line():
    sd = _smp("FPN").state_dict()
    _one_line_error(sd, "missing keys.*encoder_name", encoder_name="resnet34")  # resnet18's weights
    del sd["decoder.p4.skip_conv.weight"]
    _one_line_error(sd, r"decoder\.lateral\.2\.weight")  # segzoo's name of the missing smp key
    psp = _smp("PSPNet").state_dict()
    _one_line_error(psp, "shape mismatch", psp_out_channels=256)  # the weights have 512
    psp["decoder.conv.0.weight"] = psp["decoder.conv.0.weight"][:, :100]
    _one_line_error(psp, "shape mismatch")
    deeper = smp.PSPNet("resnet18", encoder_weights=None, encoder_depth=4, upsampling=16).state_dict()
    _one_line_error(deeper, "encoder_depth=4 with upsampling=8")  # the depth is read from the PSP input's width


def test_a_decoder_norm_without_twin_names_its_key():
    sd = smp.PSPNet("resnet18", encoder_weights=None, decoder_use_norm="layernorm").state_dict()
    _one_line_error(sd, r"'decoder\.conv\.1\.weight'.*neither 'batchnorm' nor 'identity'")
    sd = smp.Linknet("resnet18", encoder_weights=None, decoder_use_norm="layernorm").state_dict()
    _one_line_error(sd, r"'decoder\.blocks\.0\.block\.0\.1\.weight'.*neither 'batchnorm' nor 'identity'")


@pytest.mark.parametrize(("arch", "kwargs", "match"), [
    ("FPN", {"encoder_depth": 4}, "encoder_depth=4 is not available"),
    ("FPN", {"decoder_interpolation": "bicubic"}, "decoder_interpolation='bicubic' is not available"),
    ("FPN", {"decoder_segmentation_channels": 48}, "multiple of 32"),
    ("FPN", {"decoder_merge_policy": "mean"}, "decoder_merge_policy='mean' is not available"),
    ("PSPNet", {"encoder_depth": 4}, "encoder_depth=3"),
    ("Linknet", {"encoder_depth": 1}, "encoder_depth=1 leaves no skip"),
    ("Linknet", {"decoder_use_norm": "layernorm"}, "decoder_use_norm='layernorm' is not supported"),
])
def test_smp_arguments_without_twin_are_refused_in_one_line(arch, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        getattr(zsmp, arch)("resnet18", encoder_weights=None, structure="smp", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ["Linknet", "FPN", "PSPNet"])
def test_smp_structured_models_script(arch):
    model = _smp(arch)
    twin = zsmp.from_smp(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(twin)(x), twin(x))


def test_part_options_keep_segzoo_defaults():
    """The new keyword options change nothing at their defaults: segzoo's own models and checkpoints."""
    from segzoo.decoders.psp import PSPDecoder
    from segzoo.decoders.unet import UNetDecoder
    from segzoo.heads.fpn import FPNHead

    head = FPNHead([32, 32], 2, [4, 8], hidden_channels=32)
    assert [k for k in head.state_dict() if k.endswith("weight")] == [
        "branches.0.0.0.weight", "branches.0.0.1.weight", "branches.1.0.0.weight", "branches.1.0.1.weight",
        "classifier.weight"]
    assert isinstance(head.branches[0][0][1], torch.nn.BatchNorm2d) and head.classifier.in_channels == 32
    smp_like = FPNHead([32, 32], 2, [4, 8], hidden_channels=32, norm="gn", stepwise=True, merge="cat")
    assert smp_like.classifier.in_channels == 64 and len(smp_like.branches[1]) == 2
    assert smp_like([torch.zeros(1, 32, 8, 8), torch.zeros(1, 32, 4, 4)]).shape == (1, 2, 32, 32)
    psp = PSPDecoder([64], [8])
    assert "branches.1.conv.1.weight" not in psp.state_dict() and not psp.input_last
    assert "branches.1.conv.1.weight" in PSPDecoder([64], [8], branch_norm="bn").state_dict()
    link = UNetDecoder([16, 32], [2, 4], block="sum")
    assert len(link.final) == 0 and link.out_strides == [2]
    assert hasattr(link.blocks[0].conv, "__len__")  # the 3x3 conv of segzoo's sum block
    smp_link = UNetDecoder([16, 32], [2, 4], block="sum", transposed_up=True, final_channels=8)
    assert smp_link.out_strides == [1, 2] and smp_link.out_channels == [8, 16]
    assert [f.shape for f in smp_link([torch.zeros(1, 16, 8, 8), torch.zeros(1, 32, 4, 4)])] == [
        (1, 8, 16, 16), (1, 16, 8, 8)]
    with pytest.raises(ValueError, match="options of block='sum'"):
        UNetDecoder([16, 32], [2, 4], final_channels=8)
    with pytest.raises(ValueError, match="merge must be"):
        FPNHead([32], 2, [4], merge="mean")
