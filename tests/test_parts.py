"""Every registered part declares the truth: declared channels/strides equal the real tensors."""

import pytest
import torch

from segzoo.architectures import ARCHITECTURES
from segzoo.bridges import create_bridge, list_bridges
from segzoo.decoders import (
    DeepLabV3PlusDecoder,
    FPNDecoder,
    PSPDecoder,
    UNetDecoder,
    UPerNetDecoder,
    adaptive_avg_pool,
    create_decoder,
    list_decoders,
    pyramid_avg_pool,
)
from segzoo.encoders import MobileNetV2Encoder, ResnetEncoder, create_encoder, list_encoders
from segzoo.heads import UnetHead, create_head, list_heads
from segzoo.registry import Registry

SIZE = 64
# decoders of architectures that read a plain ViT's one-stride token maps (the table's encoder_kind)
TOKEN_DECODERS = {row.decoder for row in ARCHITECTURES.values() if row.encoder_kind == "tokens"}


def _check(part, features, size=SIZE):
    assert [f.shape[1] for f in features] == list(part.out_channels)
    assert [size // f.shape[-1] for f in features] == list(part.out_strides)
    assert [size // f.shape[-2] for f in features] == list(part.out_strides)


# arguments an encoder needs to be built small and offline; every registered encoder is built, with these or none
ENCODER_ARGS = {"unet": dict(in_channels=3, num_channels=8, num_blocks=4), "resnet": dict(pretrained=False),
                "timm": dict(name="test_resnet"), "timm_vit": dict(name="test_vit")}
# variants beyond the registered defaults (stage cuts, dilation)
ENCODER_VARIANTS = {
    "resnet50_l123": lambda: ResnetEncoder("resnet50", pretrained=False, layers_indices=[1, 2, 3]),
    "resnet18_os16": lambda: ResnetEncoder("resnet18", pretrained=False, output_stride=16),
    "resnet34_os8": lambda: ResnetEncoder("resnet34", pretrained=False, output_stride=8),
    "mobilenetv2_w035": lambda: MobileNetV2Encoder(width_mult=0.35),
}
ENCODERS = {**{name: (lambda n=name: create_encoder(n, **ENCODER_ARGS.get(n, {}))) for name in list_encoders()},
            **ENCODER_VARIANTS}
# decoder options beyond the registered defaults
DECODER_VARIANTS = {
    "unet_sum": lambda c, s: UNetDecoder(c, s, block="sum"),
    "unet_transpose": lambda c, s: UNetDecoder(c, s, upsample="transpose", complexity=0),
    "unet_pixelshuffle": lambda c, s: UNetDecoder(c, s, upsample="pixelshuffle", min_stride=4),
    "fpn2": lambda c, s: FPNDecoder(c, s, num_levels=2, upsample="bilinear"),
    "psp_sizes": lambda c, s: PSPDecoder(c, s, pool_sizes=(1, 3)),
    "deeplab_full": lambda c, s: DeepLabV3PlusDecoder(c, s, separable=False, fuse_convs=2, low_level_stride=8),
    "upernet_1x1": lambda c, s: UPerNetDecoder(c, s, channels=32, fuse_kernel=1, min_stride=2),
    "upernet_concat": lambda c, s: UPerNetDecoder(c, s, channels=32, fuse="concat"),
}
DECODERS = {**{name: (lambda c, s, n=name: create_decoder(n, c, s)) for name in list_decoders()}, **DECODER_VARIANTS}


@pytest.fixture(params=list(ENCODERS), scope="module")
def encoded(request):
    torch.manual_seed(0)
    enc = ENCODERS[request.param]().eval()
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, SIZE, SIZE))
    return enc, feats


def test_encoder_declares_truth(encoded):
    enc, feats = encoded
    _check(enc, feats)


@pytest.mark.parametrize("name", list_bridges())
def test_bridge_declares_truth(encoded, name):
    enc, feats = encoded
    bridge = create_bridge(name, enc.out_channels, enc.out_strides).eval()
    _check(bridge, bridge(feats))


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decoders_and_heads_declare_truth(encoded, decoder):
    enc, feats = encoded
    make = DECODERS[decoder]
    if (decoder in TOKEN_DECODERS) != (len(set(enc.out_strides)) == 1 and len(enc.out_strides) > 1):
        pytest.skip("the fit check refuses this pairing (a ViT's one-stride token maps vs a pyramid)")
    dec = make(enc.out_channels, enc.out_strides).eval()
    with torch.no_grad():
        out = dec(feats)
        _check(dec, out)
        for name in list_heads():
            head = create_head(name, dec.out_channels, 3, dec.out_strides).eval()
            assert head(out).shape == (2, 3, SIZE, SIZE), name


def test_part_registries_reject_duplicates_and_unknown_names():
    reg = Registry("widget")
    reg.register("abc", dict, size=1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("abc", list)
    with pytest.raises(KeyError, match="did you mean .abc."):
        reg["abd"]
    assert "abc" in reg and "abd" not in reg and dict(reg) == {"abc": dict} and {**reg} == {"abc": dict}
    assert reg.create("abc", colour=2) == {"size": 1, "colour": 2} and reg.names("a*") == ["abc"]
    for lookup, wrong in ((create_decoder, "upernett"), (create_head, "fpnn"), (create_bridge, "unett")):
        with pytest.raises(KeyError, match="did you mean"):
            lookup(wrong, [8], [2])
    with pytest.raises(KeyError, match="resnet"):
        create_encoder("resnett")


def test_unet_head_upsample_blocks_are_distinct_and_convolutional():
    head = UnetHead([32], 2, [4], num_upsample_blocks=2, upsample="conv")
    assert head([torch.rand(1, 32, 8, 8)]).shape == (1, 2, 32, 32)
    convs = [m for m in head.blocks.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 2 and convs[0] is not convs[1]
    with pytest.raises(ValueError, match="num_upsample_blocks"):
        UnetHead([32], 2, [4], num_upsample_blocks=3)


def test_decoder_rejects_too_few_features():
    with pytest.raises(ValueError, match="at least 2"):
        UNetDecoder([64], [4])
    with pytest.raises(ValueError, match="differ in length"):
        FPNDecoder([64, 128], [4])
    with pytest.raises(ValueError, match="shallow to deep"):
        UNetDecoder([64, 128], [8, 4])


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (1, 5), (32, 20)])
@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_torch(hw, size):
    x = torch.rand(2, 4, *hw)
    torch.testing.assert_close(adaptive_avg_pool(x, size), torch.nn.functional.adaptive_avg_pool2d(x, size))


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (32, 20)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pyramid_avg_pool_matches_torch_values_and_gradients(hw, layout):
    sizes = [1, 2, 3, 6]
    x = torch.rand(2, 5, *hw, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    got = pyramid_avg_pool(x, sizes)
    want = [torch.nn.functional.adaptive_avg_pool2d(ref, s) for s in sizes]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    weights = [torch.rand_like(w) for w in want]
    sum((g * k).sum() for g, k in zip(got, weights)).backward()
    sum((w * k).sum() for w, k in zip(want, weights)).backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_a_part_without_its_declaration_cannot_be_built():
    """``out_channels`` / ``out_strides`` are abstract for encoders and feature parts alike (segzoo.parts)."""
    from segzoo.encoders import EncoderSpec
    from segzoo.parts import FeaturePart

    class NoStrides(EncoderSpec):
        out_channels = [8]

        def forward(self, x):
            return [x]

    class NoChannels(FeaturePart):
        out_strides = [1]

        def forward(self, features):
            return features

    with pytest.raises(TypeError, match="out_strides"):
        NoStrides()
    with pytest.raises(TypeError, match="out_channels"):
        NoChannels([8], [1])


def test_upernet_level_fusion_equals_concat_fusion_for_1x1():
    """A 1x1 conv commutes with bilinear resizing, so per-level fusion with fuse_kernel=1 is the paper's concat."""
    torch.manual_seed(0)
    chans, strides = [16, 24, 32, 40], [4, 8, 16, 32]
    concat = UPerNetDecoder(chans, strides, channels=8, fuse="concat", fuse_kernel=1).eval()
    levels = UPerNetDecoder(chans, strides, channels=8, fuse="levels", fuse_kernel=1).eval()
    state = concat.state_dict()
    weight = state.pop("fuse.0.weight")
    for k in range(4):
        state[f"fuse_parts.{k}.weight"] = weight[:, 8 * k:8 * (k + 1)]
    for key in [k for k in state if k.startswith("fuse.1.")]:
        state[key.replace("fuse.1.", "fuse_norm.")] = state.pop(key)
    levels.load_state_dict(state)
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip(chans, strides)]
    with torch.no_grad():
        torch.testing.assert_close(levels(feats)[0], concat(feats)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [(dict(fuse="sum"), "fuse must be one of levels, concat"),
                                           (dict(fuse_kernel=2), "fuse_kernel must be an odd int")])
def test_upernet_rejects_bad_fusion(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UPerNetDecoder([16, 32], [4, 8], **kwargs)


def test_declared_and_property_styles_both_work():
    """Parts declare their outputs once (``declare_outputs``) or with their own properties; both compose."""
    from segzoo.models.meta import UnetMetaSpec
    from segzoo.parts import FeaturePart

    class Declared(FeaturePart):
        def __init__(self, in_channels, in_strides):
            super().__init__(in_channels, in_strides)
            self.declare_outputs(self.in_channels[:1], self.in_strides[:1])

        def forward(self, features):
            return features[:1]

    class OwnProperties(FeaturePart):
        @property
        def out_channels(self):
            return self.in_channels[:1]

        @property
        def out_strides(self):
            return self.in_strides[:1]

        def forward(self, features):
            return features[:1]

    class Forgot(FeaturePart):
        def forward(self, features):
            return features[:1]

    enc = ResnetEncoder("resnet18", pretrained=False)
    for cls in (Declared, OwnProperties):
        dec = cls(enc.out_channels, enc.out_strides)
        assert (dec.out_channels, dec.out_strides) == (enc.out_channels[:1], enc.out_strides[:1])
        model = UnetMetaSpec(enc, dec, head=UnetHead(dec.out_channels, 2, dec.out_strides)).eval()
        assert model(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)
    with pytest.raises(TypeError, match="declare_outputs"):
        Forgot([8], [1]).out_channels  # noqa: B018
    with pytest.raises(TypeError, match="declare_outputs"):
        UnetMetaSpec(enc, Forgot(enc.out_channels, enc.out_strides), head=UnetHead([64], 2, [4]))
    with pytest.raises(ValueError, match="one stride per output"):
        Declared([8], [1]).declare_outputs([8, 8], [1])
    # the built-in decoders and the bridge declare once, in the base
    for part in (UNetDecoder([8, 16], [2, 4]), FPNDecoder([8, 16], [2, 4]), PSPDecoder([8], [4]),
                 UPerNetDecoder([8, 16], [2, 4], channels=8), DeepLabV3PlusDecoder([8, 16], [4, 16], out_channels=8),
                 create_bridge("unet", [8, 16], [2, 4])):
        assert "out_channels" not in vars(type(part)) and "out_strides" not in vars(type(part))
        assert part.out_channels is not part.out_channels  # a copy: callers cannot change the declaration
