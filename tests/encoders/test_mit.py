"""The Mix Transformer encoders (mit_b0..mit_b5, issue 21 point 2): shapes, published sizes, smp/NVlabs weights."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.encoders import MIT_VARIANTS, MixTransformerEncoder, create_encoder, list_encoders
from segzoo.encoders.mit import mit_keys_from_smp
from segzoo.errors import CheckpointError

# the published MiT shapes (SegFormer, Table 6): widths, depths, and the encoders' parameter counts
PUBLISHED = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


def test_variants_are_registered_with_the_published_shapes():
    assert set(PUBLISHED) <= set(list_encoders())
    for name, (widths, depths) in PUBLISHED.items():
        assert (MIT_VARIANTS[name].widths, MIT_VARIANTS[name].depths) == (widths, depths)
    enc = create_encoder("mit_b1")
    assert isinstance(enc, MixTransformerEncoder) and enc.variant == "mit_b1"
    assert enc.out_channels == [64, 128, 320, 512] and enc.out_strides == [4, 8, 16, 32]
    assert [len(stage.blocks) for stage in enc.stages] == [2, 2, 2, 2]
    # efficient self-attention: keys/values reduced 8, 4, 2, 1x; 1, 2, 5, 8 heads; Mix-FFN expansion 4
    first = [stage.blocks[0] for stage in enc.stages]
    assert [b.attn.reduction for b in first] == [8, 4, 2, 1] and [b.attn.heads for b in first] == [1, 2, 5, 8]
    assert [b.ffn.dwconv.groups for b in first] == [256, 512, 1280, 2048]
    with pytest.raises(KeyError, match="mit_b9"):
        MixTransformerEncoder("mit_b9")


@pytest.mark.parametrize("hw", [(64, 64), (70, 45), (29, 33)])
def test_feature_shapes(hw):
    enc = MixTransformerEncoder("mit_b0").eval()
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, *hw))
    assert [f.shape[1] for f in feats] == [32, 64, 160, 256]
    for f, s in zip(feats, enc.out_strides):
        assert f.shape[2:] == (-(-hw[0] // s), -(-hw[1] // s))


def test_too_small_input_is_one_clear_error():
    with pytest.raises(ValueError, match="at least 29x29"):
        MixTransformerEncoder("mit_b0")(torch.rand(1, 3, 28, 64))


@pytest.mark.parametrize("hw", [(64, 64), (70, 45)])
def test_segformer_on_mit_any_size(hw):
    model = segzoo.Segformer(num_classes=3, encoder=MixTransformerEncoder("mit_b0"))
    model.train()
    y = model(torch.rand(2, 3, *hw))
    assert y.shape == (2, 3, *hw)
    y.mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # padded to 32x32 inside


@pytest.mark.parametrize("variant", ["mit_b0", pytest.param("mit_b2", marks=pytest.mark.slow)])
def test_smp_weights_load_by_the_key_mapping(tmp_path, variant):
    """A file saved from smp 0.6's MiT loads into ours (segzoo's keys are other names): equal features."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(1)
    ref = smp.encoders.get_encoder(variant, weights=None).eval()
    path = tmp_path / f"{variant}_smp.pth"
    torch.save(ref.state_dict(), path)
    ours = MixTransformerEncoder(variant, weights=path).eval()
    assert not set(ref.state_dict()) & set(ours.state_dict())  # a real mapping, not the same names
    for shape in [(2, 3, 64, 64), (1, 3, 70, 45)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = ref(x)[2:]  # smp: the input and an empty stride-2 placeholder first
            got = ours(x)
        assert len(got) == len(expected) == 4
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5


def test_key_mapping_of_one_block():
    sd = {"patch_embed2.proj.weight": 1, "block3.1.attn.sr.bias": 2, "block3.1.attn.norm.weight": 3,
          "block1.0.mlp.dwconv.dwconv.weight": 4, "block4.2.mlp.fc2.bias": 5, "block2.0.norm2.weight": 6,
          "block2.0.attn.kv.weight": 7, "norm4.bias": 8, "head.weight": 9}
    assert mit_keys_from_smp(sd) == {
        "stages.1.embed.proj.weight": 1, "stages.2.blocks.1.attn.reduce.bias": 2,
        "stages.2.blocks.1.attn.reduce_norm.weight": 3, "stages.0.blocks.0.ffn.dwconv.weight": 4,
        "stages.3.blocks.2.ffn.fc2.bias": 5, "stages.1.blocks.0.norm2.weight": 6,
        "stages.1.blocks.0.attn.kv.weight": 7, "stages.3.norm.bias": 8}


def test_own_weights_round_trip_and_grey_stem(tmp_path):
    src = MixTransformerEncoder("mit_b0")
    path = tmp_path / "mit.pth"
    torch.save(src.state_dict(), path)
    same = MixTransformerEncoder("mit_b0", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), same.state_dict().values()))
    grey = MixTransformerEncoder("mit_b0", in_channels=1, weights=path)
    stem = grey.stages[0].embed.proj.weight
    assert stem.shape[1] == 1 and torch.allclose(stem, src.stages[0].embed.proj.weight.sum(1, keepdim=True))


def test_bad_weights_files_are_one_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        MixTransformerEncoder("mit_b0", weights=missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a torch file" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        MixTransformerEncoder("mit_b0", weights=corrupt)
    other = tmp_path / "b1.pth"
    torch.save(MixTransformerEncoder("mit_b1").state_dict(), other)
    with pytest.raises(CheckpointError, match=r"b1\.pth.*mit_b0") as err:
        MixTransformerEncoder("mit_b0", weights=other)
    assert "shape" in str(err.value)
    deeper = tmp_path / "b2.pth"
    torch.save(MixTransformerEncoder("mit_b2").state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"b2\.pth.*unexpected keys"):
        MixTransformerEncoder("mit_b1", weights=deeper)


def test_a_whole_models_file_gives_its_encoders_weights(tmp_path):
    """A trained segzoo Segformer's, an smp Segformer's or an mmsegmentation file: the encoder part is loaded."""
    model = segzoo.Segformer(num_classes=2, encoder=MixTransformerEncoder("mit_b0"))
    path = tmp_path / "segformer.pth"
    torch.save(model.state_dict(), path)
    enc = MixTransformerEncoder("mit_b0", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), model.encoder.state_dict().values()))
    smp_keys = {f"backbone.{k}": v for k, v in _as_smp(model.encoder.state_dict()).items()}
    smp_keys["decode_head.conv_seg.weight"] = torch.zeros(2, 256, 1, 1)
    again = MixTransformerEncoder("mit_b0", weights=smp_keys)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.encoder.state_dict().values()))


def _as_smp(sd):
    """segzoo MiT keys -> smp's (the inverse of mit_keys_from_smp, for the test)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stages\.(\d)\.embed\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", k)
        k = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"block{int(m.group(1)) + 1}.", k)
        k = k.replace(".attn.reduce_norm.", ".attn.norm.").replace(".attn.reduce.", ".attn.sr.")
        k = k.replace(".ffn.dwconv.", ".mlp.dwconv.dwconv.").replace(".ffn.", ".mlp.")
        out[k] = v
    return out


@pytest.mark.parametrize("bad", [dict(variant=["mit_b0"]), dict(drop_path_rate="0.1"), dict(drop_path_rate=1.0),
                                 dict(in_channels=0)])
def test_bad_arguments_are_clear_errors(bad):
    with pytest.raises((ValueError, KeyError)):
        MixTransformerEncoder(**{"variant": "mit_b0", **bad})
