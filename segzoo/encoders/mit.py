"""Mix Transformer (MiT-B0..B5), SegFormer's hierarchical encoder (Xie et al. 2021), as an encoder.

timm has no MiT, so segzoo carries its own. Weights are read from a local file through
:mod:`segzoo.encoders.weights` (``torch.load(weights_only=True)``): a state dict in segzoo's key format,
or in smp 0.6's / NVlabs SegFormer's (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``...), which
:func:`mit_keys_from_smp` renames (the mapping is listed there); a classifier ``head.*`` is ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.encoders.base import EncoderSpec, register_encoder
from segzoo.encoders.weights import StateDictSource, adapt_stem_weight, load_into, read_state_dict
from segzoo.errors import unknown_name_error


@dataclass(frozen=True)
class MitVariant:
    """The published shape of one MiT: stage widths and depths (heads, reductions, MLP ratio are shared)."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


#: the published MiT-B0..B5 (SegFormer, Table 6)
MIT_VARIANTS: dict[str, MitVariant] = {
    "mit_b0": MitVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MitVariant((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MitVariant((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MitVariant((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MitVariant((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MitVariant((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIT_HEADS = (1, 2, 5, 8)  # attention heads per stage
MIT_REDUCTIONS = (8, 4, 2, 1)  # spatial reduction of keys/values per stage
MIT_MLP_RATIO = 4
MIT_STRIDES = [4, 8, 16, 32]
#: smallest H, W the encoder takes: the stride-4 map must be at least as large as the first 8x8 reduction
MIT_MIN_SIZE = 29
BLOCK_EPS = 1e-6  # the blocks' and stage-end LayerNorms; the patch embeddings' and reductions' use 1e-5

# smp 0.6 / NVlabs key -> segzoo key (see mit_keys_from_smp); {i} is the 1-based stage, {j} the block
_SMP_KEYS = [
    (r"patch_embed(\d)\.(proj|norm)\.", "stages.{s}.embed.{1}."),
    (r"block(\d)\.(\d+)\.attn\.sr\.", "stages.{s}.blocks.{1}.attn.reduce."),
    (r"block(\d)\.(\d+)\.attn\.norm\.", "stages.{s}.blocks.{1}.attn.reduce_norm."),
    (r"block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.", "stages.{s}.blocks.{1}.ffn.dwconv."),
    (r"block(\d)\.(\d+)\.mlp\.", "stages.{s}.blocks.{1}.ffn."),
    (r"block(\d)\.(\d+)\.", "stages.{s}.blocks.{1}."),
    (r"norm(\d)\.", "stages.{s}.norm."),
]


def mit_keys_from_smp(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an smp 0.6 (``smp.encoders.get_encoder("mit_b0").state_dict()``) or NVlabs SegFormer MiT state dict.

    The mapping (stage ``i`` = 1..4 becomes ``stages.{i-1}``; block ``j`` keeps its number):

    ====================================  =========================================
    smp / NVlabs                          segzoo
    ====================================  =========================================
    ``patch_embed{i}.proj|norm.*``        ``stages.{i-1}.embed.proj|norm.*``
    ``block{i}.{j}.norm1|norm2.*``        ``stages.{i-1}.blocks.{j}.norm1|norm2.*``
    ``block{i}.{j}.attn.q|kv|proj.*``     ``stages.{i-1}.blocks.{j}.attn.q|kv|proj.*``
    ``block{i}.{j}.attn.sr.*``            ``stages.{i-1}.blocks.{j}.attn.reduce.*``
    ``block{i}.{j}.attn.norm.*``          ``stages.{i-1}.blocks.{j}.attn.reduce_norm.*``
    ``block{i}.{j}.mlp.fc1|fc2.*``        ``stages.{i-1}.blocks.{j}.ffn.fc1|fc2.*``
    ``block{i}.{j}.mlp.dwconv.dwconv.*``  ``stages.{i-1}.blocks.{j}.ffn.dwconv.*``
    ``norm{i}.*``                         ``stages.{i-1}.norm.*``
    ``head.*`` (a classifier)             dropped
    ====================================  =========================================

    Keys matching none of these are kept as they are (the strict load then names them).
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        new = key
        for pattern, target in _SMP_KEYS:
            m = re.match(pattern, key)
            if m:
                new = target.format(*m.groups(), s=int(m.group(1)) - 1) + key[m.end():]
                break
        out[new] = value
    return out


_STEMS = ("stages.0.embed.proj.weight", "patch_embed1.proj.weight")  # segzoo's, smp's / NVlabs' first key


def encoder_part(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MiT weights of a whole model's state dict: the keys under the prefix of its stem, prefix removed.

    A segzoo ``Segformer``'s (``encoder.stages...``), an smp ``Segformer``'s (``encoder.patch_embed1...``) or an
    mmsegmentation SegFormer's (``backbone.patch_embed1...``) state dict gives its encoder's weights (the
    decoder's are not used); an encoder's own state dict is returned as it is.
    """
    prefix = next((k[:-len(stem)] for k in state_dict for stem in _STEMS if k.endswith(stem)), "")
    if not prefix:
        return state_dict
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def tokens_to_map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens (B, h*w, C) as a feature map (B, C, h, w) without a copy (channels_last memory)."""
    return t.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map (B, C, h, w) as tokens (B, h*w, C) (no copy when ``x`` is channels_last)."""
    return x.flatten(2).transpose(1, 2)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map reduced by a strided conv.

    Shapes: tokens (B, h*w, C), h, w -> (B, h*w, C).
    """

    def __init__(self, dim: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduction = reduction
        if reduction > 1:
            self.reduce = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.reduce_norm = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Attend from every token to the (reduced) map's tokens."""
        b, n, c = t.shape
        d = c // self.heads
        q = self.q(t).reshape(b, n, self.heads, d).transpose(1, 2)
        src = self.reduce_norm(map_to_tokens(self.reduce(tokens_to_map(t, h, w)))) if self.reduction > 1 else t
        kv = self.kv(src).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        if torch.onnx.is_in_onnx_export():  # opsets < 14 have no attention operator
            out = torch.softmax((q * d ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear, 3x3 depthwise conv (position information without position embeddings), GELU, linear.

    Shapes: tokens (B, h*w, C), h, w -> (B, h*w, C).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The feed-forward of one block."""
        x = self.dwconv(tokens_to_map(self.fc1(t), h, w))
        return self.fc2(self.act(map_to_tokens(x)))


class MitBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each residual (with stochastic depth).

    Shapes: tokens (B, h*w, C), h, w -> (B, h*w, C).
    """

    def __init__(self, dim: int, heads: int, reduction: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = EfficientSelfAttention(dim, heads, reduction)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.ffn = MixFFN(dim, dim * MIT_MLP_RATIO)
        self.drop_path = float(drop_path)

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = torch.rand(y.shape[0], 1, 1, dtype=y.dtype, device=y.device) < keep
        return y * mask / keep

    def forward(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """One block."""
        t = t + self._drop(self.attn(self.norm1(t), h, w))
        return t + self._drop(self.ffn(self.norm2(t), h, w))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patches: a strided conv (kernel > stride) and a LayerNorm over channels.

    Shapes: (B, C_in, H, W) -> tokens (B, h*w, C), with (h, w) = the conv's output size.
    """

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Tokens and their map size."""
        x = self.proj(x)
        return self.norm(map_to_tokens(x)), x.shape[2], x.shape[3]


class MitStage(nn.Module):
    """Patch embedding, blocks, LayerNorm. Shapes: (B, C_in, H, W) -> (B, C, H / s, W / s), s its stride."""

    def __init__(self, in_channels: int, dim: int, depth: int, heads: int, reduction: int, kernel: int,
                 stride: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, kernel, stride)
        self.blocks = nn.ModuleList(MitBlock(dim, heads, reduction, drop_paths[j]) for j in range(depth))
        self.norm = nn.LayerNorm(dim, eps=BLOCK_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's feature map (channels_last memory)."""
        t, h, w = self.embed(x)
        for block in self.blocks:
            t = block(t, h, w)
        return tokens_to_map(self.norm(t), h, w)


class MixTransformerEncoder(EncoderSpec):
    """SegFormer's Mix Transformer: four stages at strides 4, 8, 16, 32, no position embeddings.

    Each stage: an overlapping patch embedding (7x7 stride 4, then 3x3 stride 2), transformer blocks
    with efficient self-attention (keys/values from the map reduced 8x, 4x, 2x, 1x by a strided conv;
    1, 2, 5, 8 heads) and Mix-FFN (expansion 4, a 3x3 depthwise conv), and a LayerNorm. Widths and
    depths are the published ones (:data:`MIT_VARIANTS`).

    Args:
        variant: ``"mit_b0"`` .. ``"mit_b5"`` (registered as encoders of those names).
        in_channels: input channels; with weights, the stem is adapted (see
            :func:`segzoo.encoders.weights.adapt_stem_weight`).
        weights: ``None`` (random) or a local file / dict of weights: segzoo's keys, or smp 0.6's / NVlabs
            SegFormer's (renamed by :func:`mit_keys_from_smp`), e.g. a
            ``torch.save(smp.encoders.get_encoder("mit_b0").state_dict(), path)`` file; a whole segmentation
            model's file gives its encoder's weights (see :func:`encoder_part`). A missing, damaged or
            other-variant file is one error naming it.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this rate (0.1 as published).

    Shapes: (B, in_channels, H, W) -> [(B, widths[i], H / s_i, W / s_i)], s = 4, 8, 16, 32 (sizes rounded up).
    """

    def __init__(self, variant: str = "mit_b0", in_channels: int = 3, weights: StateDictSource | None = None,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if not isinstance(variant, str) or variant not in MIT_VARIANTS:
            raise unknown_name_error("MiT variant", str(variant), MIT_VARIANTS)
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        spec = MIT_VARIANTS[variant]
        self.variant = variant
        self.in_channels = in_channels
        total = sum(spec.depths)
        rates = [float(drop_path_rate) * k / max(total - 1, 1) for k in range(total)]
        stages, prev, start = [], in_channels, 0
        for i, (dim, depth) in enumerate(zip(spec.widths, spec.depths)):
            stages.append(MitStage(prev, dim, depth, MIT_HEADS[i], MIT_REDUCTIONS[i], 7 if i == 0 else 3,
                                   4 if i == 0 else 2, rates[start:start + depth]))
            prev, start = dim, start + depth
        self.stages = nn.ModuleList(stages)
        self._init_weights()
        if weights is not None:
            self.load_weights(weights)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)

    def load_weights(self, weights: StateDictSource) -> None:
        """Load a file or dict of MiT weights (segzoo's or smp's / NVlabs' keys; see :func:`encoder_part`) strictly.

        Raises:
            FileNotFoundError: no such file.
            CheckpointError: not a readable torch file of tensors, or weights of another variant
                (missing keys, other shapes); the message names the file.
        """
        source = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else None
        sd = encoder_part(read_state_dict(weights))
        if _STEMS[1] in sd:
            sd = mit_keys_from_smp(sd)
        stem = "stages.0.embed.proj.weight"
        if self.in_channels != 3 and stem in sd and sd[stem].dim() == 4 and sd[stem].shape[1] == 3:
            sd[stem] = adapt_stem_weight(sd[stem], self.in_channels)
        load_into(self, sd, f"MixTransformerEncoder({self.variant!r})", source=source,
                  hint=f" (are these {self.variant} weights? MiT-B0 is 32..256 wide, B1..B5 64..512 and "
                       f"differ in depth: {dict((k, v.depths) for k, v in MIT_VARIANTS.items())})")

    @property
    def out_channels(self) -> list[int]:
        return list(MIT_VARIANTS[self.variant].widths)

    @property
    def out_strides(self) -> list[int]:
        return list(MIT_STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> the four stage outputs, shallow to deep.

        Raises:
            ValueError: H or W below :data:`MIT_MIN_SIZE` (the stride-4 map is smaller than its 8x8 key/value
                reduction; segzoo's models pad every input to a multiple of 32, so they take any size).
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and min(x.shape[-2:]) < MIT_MIN_SIZE:
            raise ValueError(f"MixTransformerEncoder needs inputs of at least {MIT_MIN_SIZE}x{MIT_MIN_SIZE}, got "
                             f"{tuple(x.shape)}; pad it (a segzoo model built on this encoder does)")
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


for _variant in MIT_VARIANTS:
    register_encoder(_variant, MixTransformerEncoder, variant=_variant)
