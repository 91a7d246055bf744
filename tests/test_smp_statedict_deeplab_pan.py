"""Issue 22 point 3: smp 0.6's DeepLabV3, DeepLabV3Plus and PAN weights load into segzoo (``structure="smp"``)."""

import pytest
import torch

import segzoo.smp as zsmp
from segzoo.encoders import ResnetEncoder
from segzoo.errors import CheckpointError

smp = pytest.importorskip("segmentation_models_pytorch")

# inputs smp takes: multiples of the encoder's output stride (PAN: its pyramid needs the deepest feature >= 8x8)
SIZES = {"DeepLabV3": [(2, 64, 64), (1, 72, 88)], "DeepLabV3Plus": [(2, 64, 64), (1, 80, 48)],
         "PAN": [(2, 128, 128), (1, 128, 176)]}


def _smp_model(arch, encoder="resnet18", seed=0, **kwargs):
    """A random smp model in eval mode, with non-trivial BatchNorm statistics (a wrong mapping shows)."""
    torch.manual_seed(seed)
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=3, **kwargs)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _max_diff(reference, twin, x):
    with torch.no_grad():
        expected, got = reference(x), twin(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    assert all(g.shape == e.shape for g, e in zip(got, expected))
    return max((g - e).abs().max().item() for g, e in zip(got, expected))


def _assert_same_outputs(reference, twin, arch, sizes=None):
    twin.eval()
    for b, h, w in sizes or SIZES[arch]:
        x = torch.randn(b, twin.in_channels, h, w, generator=torch.Generator().manual_seed(1))
        assert _max_diff(reference, twin, x) <= 1e-5


CASES = [
    ("DeepLabV3", "resnet18", {}, None),
    ("DeepLabV3", "resnet34", {"aux_params": {"classes": 4, "pooling": "max"}}, None),
    ("DeepLabV3", "resnet34", {"encoder_output_stride": 16, "decoder_atrous_rates": (3, 5, 7),
                               "decoder_aspp_separable": True, "decoder_channels": 64}, [(2, 64, 64), (1, 80, 48)]),
    ("DeepLabV3", "resnet18", {"encoder_depth": 4, "decoder_aspp_dropout": 0.1, "in_channels": 1,
                               "activation": "sigmoid"}, None),
    ("DeepLabV3Plus", "resnet18", {}, None),
    ("DeepLabV3Plus", "resnet34", {"aux_params": {"classes": 2}}, None),
    ("DeepLabV3Plus", "resnet50", {"encoder_output_stride": 8, "decoder_aspp_separable": False,
                                   "decoder_channels": 64, "decoder_atrous_rates": (6, 12, 18)}, None),
    ("DeepLabV3Plus", "resnet18", {"encoder_depth": 3, "decoder_channels": 32}, None),
    ("PAN", "resnet18", {}, None),
    ("PAN", "resnet34", {"aux_params": {"classes": 2, "dropout": 0.5}}, None),
    ("PAN", "resnet18", {"encoder_output_stride": 32, "decoder_interpolation": "nearest", "decoder_channels": 16},
     [(2, 256, 256), (1, 256, 288)]),
    ("PAN", "resnet34", {"encoder_depth": 4, "decoder_interpolation": "bicubic"}, None),
]


@pytest.mark.parametrize(("arch", "encoder", "kwargs", "sizes"), CASES,
                         ids=[f"{a}-{e}-{i}" for i, (a, e, _, _) in enumerate(CASES)])
def test_from_smp_model_gives_smps_outputs(arch, encoder, kwargs, sizes):
    reference = _smp_model(arch, encoder, **kwargs)
    twin = zsmp.from_smp(reference)
    assert type(twin).__name__ == arch and twin.structure == "smp" and not twin.training
    _assert_same_outputs(reference, twin, arch, sizes)


@pytest.mark.parametrize("arch", ["DeepLabV3", "DeepLabV3Plus", "PAN"])
def test_training_mode_gives_smps_outputs(arch):
    """Train mode (batch statistics; no dropout): the same function, biases before BatchNorm included."""
    kwargs = {"decoder_aspp_dropout": 0.0} if arch != "PAN" else {}
    reference = _smp_model(arch, "resnet18", **kwargs)
    twin = zsmp.from_smp(reference)
    reference.train()
    twin.train()
    b, h, w = SIZES[arch][0]
    assert _max_diff(reference, twin, torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(2))) <= 1e-4


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), [
    ("DeepLabV3", "resnet34", {"decoder_aspp_separable": True, "encoder_depth": 4}),
    ("DeepLabV3Plus", "resnet18", {"decoder_channels": 64, "aux_params": {"classes": 5}}),
    ("DeepLabV3Plus", "resnet50", {"decoder_aspp_separable": False}),
    ("PAN", "resnet34", {"encoder_depth": 4, "decoder_channels": 16})])
def test_from_smp_state_dict_reads_the_arguments_from_the_keys(arch, encoder, kwargs):
    reference = _smp_model(arch, encoder, **kwargs)
    twin = zsmp.from_smp(reference.state_dict())  # class, encoder, depth, widths, separable, aux from the keys
    assert type(twin).__name__ == arch and twin.smp_arguments["encoder_name"] == encoder
    for key, value in kwargs.items():
        assert twin.smp_arguments[key] == value if key != "aux_params" else \
            twin.smp_arguments[key]["classes"] == value["classes"]
    _assert_same_outputs(reference, twin, arch)
    _assert_same_outputs(reference, zsmp.from_smp(reference.state_dict(), arch=arch.lower()), arch)


@pytest.mark.parametrize(("arch", "kwargs", "sizes"), [
    ("DeepLabV3", {"encoder_output_stride": 16, "decoder_atrous_rates": (2, 4, 6)}, [(1, 64, 96)]),
    ("DeepLabV3Plus", {"encoder_output_stride": 8}, None),
    ("PAN", {"decoder_interpolation": "area"}, None)])
def test_arguments_not_in_the_keys_are_passed(arch, kwargs, sizes):
    reference = _smp_model(arch, **kwargs)
    _assert_same_outputs(reference, zsmp.from_smp(reference.state_dict(), arch, **kwargs), arch, sizes)


def test_load_smp_state_dict_into_smp_structured_models(tmp_path):
    for arch in ("DeepLabV3", "DeepLabV3Plus", "PAN"):
        reference = _smp_model(arch, "resnet34")
        model = getattr(zsmp, arch)("resnet34", encoder_weights=None, classes=3, structure="smp")
        model.set_layout(False)
        torch.save({"state_dict": reference.state_dict()}, tmp_path / f"{arch}.pth")
        assert zsmp.load_smp_state_dict(model, tmp_path / f"{arch}.pth") is model
        _assert_same_outputs(reference, model, arch)


def test_smps_older_deeplabv3_keys_load():
    """smp < 0.4 saved DeepLabV3's decoder as a Sequential (``decoder.0/1/2``); smp itself still loads them."""
    reference = _smp_model("DeepLabV3")
    names = {"aspp": "0", "conv": "1", "bn": "2"}
    old = {(f"decoder.{names[k.split('.')[1]]}." + k.split(".", 2)[2]) if k.startswith("decoder.") else k: v
           for k, v in reference.state_dict().items()}
    assert "decoder.0.project.0.weight" in old
    _assert_same_outputs(reference, zsmp.from_smp(old), "DeepLabV3")


def test_smps_dilation_is_not_torchvisions():
    """smp dilates every block of a stage; torchvision keeps the first at the previous rate: outputs differ."""
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    tv = ResnetEncoder("resnet18", pretrained=False, output_stride=8).eval()
    ours = ResnetEncoder("resnet18", pretrained=False, output_stride=8, dilation="smp").eval()
    ours.load_state_dict(tv.state_dict())
    assert ours.stages[3][0].conv1.dilation == (2, 2) and ours.stages[4][0].conv1.dilation == (4, 4)
    assert tv.stages[3][0].conv1.dilation == (1, 1) and tv.stages[4][0].conv1.dilation == (2, 2)
    with torch.no_grad():
        assert (tv(x)[-1] - ours(x)[-1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="dilation must be"):
        ResnetEncoder("resnet18", pretrained=False, dilation="timm")


def _one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    return message


@pytest.mark.parametrize(("source", "target"), [("DeepLabV3", "PAN"), ("PAN", "DeepLabV3Plus"),
                                                ("DeepLabV3Plus", "DeepLabV3"), ("Unet", "PAN")])
def test_another_architecture_names_the_first_key_that_does_not_map(source, target):
    sd = _smp_model(source).state_dict()
    first = next(k for k in sd if not k.startswith("encoder."))
    model = getattr(zsmp, target)("resnet18", encoder_weights=None, classes=3, structure="smp")
    with pytest.raises(CheckpointError) as exc:
        zsmp.load_smp_state_dict(model, sd)
    _one_line(exc, f"smp {target} key {first!r} does not map")
    with pytest.raises(CheckpointError) as exc:
        zsmp.from_smp(sd, arch=target)
    _one_line(exc, repr(first))


def test_another_encoder_is_one_line():
    sd = _smp_model("DeepLabV3Plus", "resnet18").state_dict()
    model = zsmp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=3, structure="smp")
    with pytest.raises(CheckpointError) as exc:
        zsmp.load_smp_state_dict(model, sd)
    _one_line(exc, "encoder.")
    mobilenet = smp.PAN("mobilenet_v2", encoder_weights=None)  # not a ResNet: its first key is named
    with pytest.raises(CheckpointError) as exc:
        zsmp.from_smp(mobilenet.state_dict())
    _one_line(exc, "'encoder.features.0.0.weight' does not map")


@pytest.mark.parametrize("arch", ["DeepLabV3", "DeepLabV3Plus", "PAN"])
def test_a_missing_key_or_a_wrong_shape_is_one_line(arch):
    reference = _smp_model(arch)
    model = getattr(zsmp, arch)("resnet18", encoder_weights=None, classes=3, structure="smp")
    sd = dict(reference.state_dict())
    key = next(k for k in sd if k.startswith("decoder.") and k.endswith("running_var"))
    del sd[key]
    with pytest.raises(CheckpointError) as exc:
        zsmp.load_smp_state_dict(model, sd)
    _one_line(exc, "missing")
    sd = dict(reference.state_dict())
    sd["segmentation_head.0.weight"] = torch.zeros(5, *sd["segmentation_head.0.weight"].shape[1:])
    with pytest.raises(CheckpointError) as exc:
        zsmp.load_smp_state_dict(model, sd)
    _one_line(exc, "head.classifier.weight")
    sd = dict(reference.state_dict())  # smp's ASPP projection over the five branches, with a wrong width
    if arch != "PAN":
        key = next(k for k in sd if k.endswith("project.0.weight"))
        sd[key] = torch.zeros(256, 999, 1, 1)
        with pytest.raises(CheckpointError) as exc:
            zsmp.load_smp_state_dict(model, sd)
        _one_line(exc, "project")


@pytest.mark.parametrize(("arch", "kwargs", "match"), [
    ("DeepLabV3", {"encoder_output_stride": 32}, "encoder_output_stride=32"),
    ("DeepLabV3Plus", {"decoder_atrous_rates": (1, 2)}, "decoder_atrous_rates"),
    ("DeepLabV3Plus", {"encoder_depth": 2}, "encoder_depth"),
    ("PAN", {"decoder_interpolation": "linear"}, "decoder_interpolation='linear'"),
    ("PAN", {"encoder_output_stride": 8}, "encoder_output_stride=8")])
def test_structure_smp_refuses_what_smp_refuses(arch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(zsmp, arch)("resnet18", encoder_weights=None, structure="smp", **kwargs)


def test_segzoo_structure_still_refuses_deeplabv3_rates():
    """The arguments ``structure="smp"`` reads itself stay refused by segzoo's own structure."""
    with pytest.raises(ValueError, match="decoder_atrous_rates"):
        zsmp.DeepLabV3("resnet18", encoder_weights=None, decoder_atrous_rates=(1, 2, 3))


def test_pan_too_small_input_is_a_clear_error_and_scripting_works():
    model = zsmp.PAN("resnet18", encoder_weights=None, structure="smp").eval()
    with pytest.raises(ValueError, match="at least 8x8"):
        model(torch.randn(1, 3, 64, 64))
    scripted = torch.jit.script(model)  # traced on an input the pyramid takes
    x = torch.randn(1, 3, 128, 144)
    with torch.no_grad():
        assert (scripted(x) - model(x)).abs().max() <= 1e-5


def test_pans_older_upscale_mode_is_its_decoder_interpolation():
    """A script written for smp's older PAN (``upscale_mode=``): smp's config keeps it, and so does the twin."""
    with pytest.warns(DeprecationWarning):
        reference = _smp_model("PAN", upscale_mode="nearest")
    with pytest.warns(DeprecationWarning, match="upscale_mode"):
        twin = zsmp.from_smp(reference)
    assert twin.smp_arguments["decoder_interpolation"] == "nearest"
    _assert_same_outputs(reference, twin, "PAN")


def test_a_crafted_projection_tensor_is_one_line():
    sd = dict(_smp_model("DeepLabV3").state_dict())
    sd["decoder.aspp.project.0.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as exc:
        zsmp.from_smp(sd)
    _one_line(exc, "decoder.aspp.project")


def test_a_twin_saved_with_save_pretrained_comes_back_the_same(tmp_path):
    reference = _smp_model("DeepLabV3", encoder_output_stride=16, decoder_atrous_rates=(2, 3, 4),
                           decoder_aspp_separable=True, decoder_channels=32)
    twin = zsmp.from_smp(reference)
    twin.save_pretrained(tmp_path / "twin")
    again = zsmp.from_pretrained(tmp_path / "twin")
    assert again.structure == "smp" and again.smp_arguments["decoder_atrous_rates"] == [2, 3, 4]
    again.set_layout(False)
    _assert_same_outputs(reference, again, "DeepLabV3", [(1, 64, 96)])
