"""A plain timm Vision Transformer (one stride, the patch size) as an encoder of token maps, for DPT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.encoders.base import EncoderSpec, register_encoder
from segzoo.encoders.weights import timm_weights_access, timm_weights_hint
from segzoo.errors import WeightsUnavailableError, unknown_name_error

READOUTS = ("ignore", "add", "cat")
#: timm modules whose models build a plain ``VisionTransformer`` (``vit_*``, ``deit_*``, ``test_vit*``)
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def is_plain_vit(name: str) -> bool:
    """Whether timm model ``name`` is defined with the plain ViTs (``vit_*``, ``deit_*``, ``test_vit``...).

    Read from the model's registered entry point, nothing is built; :class:`ViTEncoder` checks the built
    model again (a distilled DeiT, a hybrid or a patch size that is not square are refused there).
    """
    import timm

    try:
        module = timm.models.model_entrypoint(str(name).partition(".")[0]).__module__
    except (RuntimeError, KeyError, ValueError):
        return False
    # a distilled DeiT adds a distillation token with its own position handling: TimmEncoder keeps it
    return module in VIT_MODULES and "distilled" not in str(name)


def uniform_block_indices(depth: int, count: int) -> list[int]:
    """``count`` block indices spread evenly over ``depth`` blocks, ending with the last (12, 4 -> 2, 5, 8, 11)."""
    return [round((i + 1) * depth / count) - 1 for i in range(count)]


@register_encoder("timm_vit")
class ViTEncoder(EncoderSpec):
    """A timm plain ViT returning the token maps of ``num_features`` blocks, all at stride = the patch size.

    ``TimmEncoder("vit_small_patch16_224")`` builds this class (plain ViTs have no feature pyramid). Any
    H x W whose sides are multiples of the patch size is taken (the models pad to it): the position
    embedding is resized to the token grid with bilinear interpolation (timm's own resize is a bicubic
    antialiased one, which ONNX cannot export), so ONNX, TorchScript tracing and torch.export work at
    any size. The blocks after the deepest one used are not built.

    Args:
        name: a timm plain ViT (``vit_*``, ``deit_*`` without distillation, ``test_vit``).
        pretrained: timm's pretrained weights (cache only with ``SEGZOO_OFFLINE=1``, as :class:`TimmEncoder`).
        in_channels: input channels.
        num_features: how many blocks' token maps to return, spread evenly and ending with the last block.
        out_indices: the blocks whose token maps are returned (replaces ``num_features``).
        readout: what the prefix (class / register) tokens do: ``"ignore"``, ``"add"`` (their mean is added
            to every token; default) or ``"cat"`` (concatenated to every token, then Linear + GELU, as DPT's
            "project" readout).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``pretrained_cfg_overlay``).

    Shapes: (B, in_channels, H, W) -> num_features x (B, embed_dim, H / patch, W / patch).
    """

    def __init__(self, name: str = "vit_small_patch16_224", pretrained: bool = False, in_channels: int = 3,
                 num_features: int = 4, out_indices: Sequence[int] | None = None, readout: str = "add",
                 **timm_kwargs: Any) -> None:
        super().__init__()
        import timm
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import VisionTransformer

        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise unknown_name_error("timm model", str(name), timm.list_models("*vit*"))
        if not is_plain_vit(name):
            raise ValueError(f"timm model {name!r} is not a plain ViT (no token maps at one stride); ViTEncoder "
                             f"takes vit_*/deit_* models, e.g. 'vit_small_patch16_224' (a CNN fits TimmEncoder)")
        if readout not in READOUTS:
            raise ValueError(f"ViTEncoder: readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        for key in ("features_only", "dynamic_img_size", "num_classes"):
            if key in timm_kwargs:
                raise ValueError(f"ViTEncoder sets timm's {key} itself; remove {key}= from its arguments")
        if "output_stride" in timm_kwargs:
            raise ValueError(f"timm model {name!r} is a plain ViT: it cannot dilate (output_stride="
                             f"{timm_kwargs['output_stride']!r}); its tokens are at one stride, its patch size")
        self.model = self._create(timm, name, pretrained, in_channels, timm_kwargs)
        model = self.model
        if type(model)._pos_embed is not VisionTransformer._pos_embed or type(model.patch_embed) is not PatchEmbed:
            raise ValueError(f"timm model {name!r} ({type(model).__name__}, {type(model.patch_embed).__name__}) "
                             f"is not a plain ViT; ViTEncoder takes vit_*/deit_* models with a patch embedding "
                             f"and a position embedding (e.g. 'vit_small_patch16_224')")
        ph, pw = model.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"timm model {name!r} has a non-square patch {ph}x{pw}; ViTEncoder needs square patches")
        depth = len(model.blocks)
        if out_indices is None:
            if not isinstance(num_features, int) or not 1 <= num_features <= depth:
                raise ValueError(f"ViTEncoder: num_features must be an int in 1..{depth} ({name!r} has {depth} "
                                 f"blocks), got {num_features!r}")
            out_indices = uniform_block_indices(depth, num_features)
        indices = [int(i) for i in out_indices]
        if not indices or sorted(set(indices)) != indices or indices[0] < 0 or indices[-1] >= depth:
            raise ValueError(f"ViTEncoder: out_indices must be increasing block indices in 0..{depth - 1} "
                             f"({name!r} has {depth} blocks), got {list(out_indices)}")
        model.blocks = model.blocks[:indices[-1] + 1]  # the deeper blocks would be computed and thrown away
        for unused in ("norm", "fc_norm", "head_drop", "head", "attn_pool"):
            if isinstance(getattr(model, unused, None), nn.Module):
                setattr(model, unused, nn.Identity())
        self.name = name
        self.in_channels = in_channels
        self.indices = indices
        self.readout = readout
        self.patch_size = int(ph)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid_size = tuple(int(g) for g in model.patch_embed.grid_size)
        self.project = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * self.embed_dim, self.embed_dim), nn.GELU()) for _ in indices
        ) if readout == "cat" and self.num_prefix_tokens else None

    @staticmethod
    def _create(timm: Any, name: str, pretrained: bool, in_channels: int, timm_kwargs: dict[str, Any]) -> nn.Module:
        """``timm.create_model`` with TimmEncoder's rules for pretrained weights (:func:`timm_weights_access`)."""
        access, where, _ = timm_weights_access(name, pretrained, timm_kwargs)
        try:
            with access:
                # dynamic_img_size: the patch embedding takes any size and returns (B, H/p, W/p, C)
                return timm.create_model(name, pretrained=pretrained, in_chans=in_channels, num_classes=0,
                                         dynamic_img_size=True, **timm_kwargs)
        except TypeError as exc:  # an argument the ViT's constructor does not take
            raise ValueError(f"timm model {name!r} does not take these arguments: {', '.join(sorted(timm_kwargs))} "
                             f"({exc})") from exc
        except RuntimeError as exc:
            if pretrained:
                raise WeightsUnavailableError(
                    f"pretrained timm weights for {name!r} could not be loaded ({exc}); use pretrained=False "
                    f"or fill the Hugging Face cache") from exc
            raise
        except OSError as exc:
            raise WeightsUnavailableError(f"{timm_weights_hint(name, where)} ({type(exc).__name__})") from exc

    @property
    def out_channels(self) -> list[int]:
        return [self.embed_dim] * len(self.indices)

    @property
    def out_strides(self) -> list[int]:
        return [self.patch_size] * len(self.indices)

    def _position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """The grid part of the position embedding at a gh x gw grid: (1, gh * gw, C)."""
        pos = self.model.pos_embed
        first = 0 if self.model.no_embed_class else self.num_prefix_tokens
        grid = pos[:, first:].reshape(1, self.grid_size[0], self.grid_size[1], -1).permute(0, 3, 1, 2)
        # exported graphs always resize (to the same size it is the identity) so they work at every size
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or (gh, gw) != self.grid_size:
            grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding and the prefix tokens: (B, C_in, H, W) -> (B, prefix + H/p * W/p, C)."""
        model = self.model
        x = model.patch_embed(x)  # (B, gh, gw, C)
        b, gh, gw, c = x.shape
        x = x.reshape(b, gh * gw, c)
        prefix = [t.expand(b, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        if model.pos_embed is None:
            return torch.cat(prefix + [x], dim=1) if prefix else x
        x = x + self._position_embedding(gh, gw)
        if prefix:
            if not model.no_embed_class:
                prefix = [t + model.pos_embed[:, :self.num_prefix_tokens] for t in [torch.cat(prefix, dim=1)]]
            x = torch.cat(prefix + [x], dim=1)
        return model.pos_drop(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W), H and W multiples of the patch size -> token maps (B, embed_dim, H/p, W/p)."""
        model = self.model
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = model.norm_pre(model.patch_drop(self._embed(x)))
        maps = []
        n = self.num_prefix_tokens
        # token maps are channels_last views: a model set to NCHW (its 4-D weights NCHW) gets NCHW maps, so its
        # convolutions take the NCHW kernels, as smp's DPT's (whose "cat" readout, a Linear, leaves them as views)
        nchw = self.model.patch_embed.proj.weight.is_contiguous() and self.project is None
        for i, block in enumerate(model.blocks):
            x = block(x)
            if i in self.indices:
                tokens = x[:, n:]
                if n and self.readout == "add":
                    tokens = tokens + x[:, :n].mean(dim=1, keepdim=True)
                elif n and self.project is not None:
                    k = self.indices.index(i)
                    tokens = self.project[k](torch.cat([tokens, x[:, :1].expand_as(tokens)], dim=2))
                grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
                maps.append(grid.contiguous() if nchw else grid)
        return maps
