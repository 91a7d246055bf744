"""Any timm model that supports ``features_only=True`` as an encoder."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from segzoo.encoders.base import EncoderSpec, register_encoder
from segzoo.encoders.vit import ViTEncoder, is_plain_vit
from segzoo.encoders.weights import hub_offline, offline, timm_local_weights, timm_weights_hint
from segzoo.errors import WeightsUnavailableError, unknown_name_error


@register_encoder("timm")
class TimmEncoder(EncoderSpec):
    """Wrap ``timm.create_model(name, features_only=True, ...)``.

    Channels and strides come from timm's ``feature_info`` (``channels()``,
    ``reduction()``); models whose features are NHWC are permuted to NCHW.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet34"``, ``"test_resnet"``.
        pretrained: load timm's pretrained weights (needs them cached or a network; with
            ``SEGZOO_OFFLINE=1`` only the caches are read, and a miss is one error naming them and
            the local-file form ``pretrained_cfg_overlay=dict(file=...)``).
        in_channels: input channels (timm adapts pretrained stems itself).
        out_indices: which feature levels to return (timm's ``out_indices``).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``output_stride``, ``drop_path_rate``).

    A plain ViT (``vit_*``, ``deit_*``: one stride, no pyramid) gives a :class:`~segzoo.encoders.ViTEncoder`
    (token maps of 4 blocks, any input size), the encoder DPT takes.

    Shapes: (B, in_channels, H, W) -> [(B, out_channels[i], H / out_strides[i], W / out_strides[i])].
    """

    def __new__(cls, name: str = "", pretrained: bool = False, in_channels: int = 3,
                out_indices: list[int] | None = None, **timm_kwargs: Any) -> EncoderSpec:
        if cls is TimmEncoder and isinstance(name, str) and is_plain_vit(name):
            return ViTEncoder(name, pretrained=pretrained, in_channels=in_channels, out_indices=out_indices,
                              **timm_kwargs)
        return super().__new__(cls)

    def __init__(self, name: str, pretrained: bool = False, in_channels: int = 3,
                 out_indices: list[int] | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise unknown_name_error("timm model", str(name), timm.list_models())
        kwargs = dict(features_only=True, pretrained=pretrained, in_chans=in_channels, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        where = "the Hugging Face / torch hub caches"
        overlay = timm_kwargs.get("pretrained_cfg_overlay")
        local_file = overlay.get("file") if isinstance(overlay, dict) else None
        if pretrained and local_file and not os.path.isfile(local_file):
            raise FileNotFoundError(f"no such weights file: {local_file} (pretrained_cfg_overlay file of timm "
                                    f"model {name!r})")
        stay_offline = pretrained and offline()
        if stay_offline:  # look in the caches first: no network request, no retries
            local, where = timm_local_weights(name, timm_kwargs)
            if not local:
                raise WeightsUnavailableError(timm_weights_hint(name, where) + " (SEGZOO_OFFLINE is set)")
        try:
            with hub_offline() if stay_offline else contextlib.nullcontext():
                self.model = timm.create_model(name, **kwargs)
        except RuntimeError as exc:
            if pretrained and "features_only" not in str(exc):
                raise WeightsUnavailableError(
                    f"pretrained timm weights for {name!r} could not be loaded ({exc}); use pretrained=False "
                    f"or fill the Hugging Face cache") from exc
            raise ValueError(f"timm model {name!r} does not support features_only=True: {exc}") from exc
        except OSError as exc:  # huggingface_hub raises OSError subclasses offline
            raise WeightsUnavailableError(f"{timm_weights_hint(name, where)} ({type(exc).__name__})") from exc
        self.name = name
        self.in_channels = in_channels
        self._channels = [int(c) for c in self.model.feature_info.channels()]
        self._strides = [int(r) for r in self.model.feature_info.reduction()]
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self._nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"

    @property
    def out_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def out_strides(self) -> list[int]:
        return list(self._strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> timm's feature maps as NCHW tensors, shallow to deep."""
        features = self.model(x)
        if self._nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
