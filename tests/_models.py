"""Small models shared by the tests (tests/ is on the import path)."""

from __future__ import annotations

import torch

import segzoo
from segzoo.architectures import ARCHITECTURES

TINY = {"num_channels": 8, "num_blocks": 2}
TINY_VIT = {"name": "test_vit"}  # 371k parameters, embed dim 64, patch 16


def tiny_model(name: str = "unet", num_classes: int = 2, **kwargs) -> torch.nn.Module:
    """A small registry model (random weights, nothing downloaded)."""
    if name.startswith("resnet"):
        kwargs.setdefault("pretrained", False)
    elif name.startswith("mobilenetv2"):
        kwargs.setdefault("width_mult", 0.5)
    elif name in ARCHITECTURES and ARCHITECTURES[name].encoder_kind == "tokens":  # DPT: the smallest timm ViT
        kwargs = {"encoder_params": TINY_VIT, **kwargs}
    else:
        kwargs = {**TINY, **kwargs}
    torch.manual_seed(0)
    model = segzoo.create_model(name, num_classes=num_classes, **kwargs)
    # non-trivial BatchNorm statistics, so eval and train modes differ
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return model.eval()
