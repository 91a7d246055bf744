"""Issue 21, point 1: the generic family's bridge belongs to its from-scratch UnetEncoder only.

A timm, ResNet or custom encoder gets no layer it did not ask for (``bridge_params`` asks); weights saved
before, with the then-default bridge, load into the model built with ``bridge_params={}``.
"""

import hashlib

import pytest
import torch
import torch.nn as nn

from segzoo import FPNUnet, Unet, load_model
from segzoo.checkpoint import save_checkpoint
from segzoo.encoders import EncoderSpec, ResnetEncoder, TimmEncoder
from segzoo.errors import CheckpointError


class TwoLevels(EncoderSpec):
    """A custom encoder: strides 2 and 4."""

    def __init__(self):
        super().__init__()
        self.in_channels = 3
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    @property
    def out_channels(self):
        return [8, 16]

    @property
    def out_strides(self):
        return [2, 4]

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _bridge_modules(model):
    return [name for name, _ in model.named_modules() if name.split(".")[0] == "bridge"]


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_timm_unet_gets_no_bridge_and_the_size_of_smps(name):
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = Unet(encoder=TimmEncoder(name), num_classes=2)
    theirs = _count(smp.Unet(f"tu-{name}", encoder_weights=None, classes=2))
    assert model.bridge is None and _bridge_modules(model) == []
    # before: 38.0 M (resnet18) and 450.3 M (resnext50_32x4d), a random stride-64 stage nobody asked for
    assert abs(_count(model) - theirs) / theirs < 0.01, (_count(model), theirs)
    assert model.size_multiple == 32  # the encoder's deepest stride, not the bridge's 64


def test_unet_encoder_keeps_its_bridge_and_size():
    model = Unet(num_classes=2)
    assert _count(model) == 7_849_634 and model.bridge is not None and model.size_multiple == 16


@pytest.mark.parametrize("make", [TwoLevels, lambda: ResnetEncoder("resnet18", pretrained=False)],
                         ids=["custom", "resnet"])
def test_other_encoders_get_a_bridge_only_when_asked(make):
    plain = Unet(encoder=make(), num_classes=2)
    assert plain.bridge is None and _bridge_modules(plain) == []
    assert plain.size_multiple == max(plain.encoder.out_strides)
    assert plain(torch.rand(2, 3, 40, 36)).shape == (2, 2, 40, 36)
    asked = Unet(encoder=make(), num_classes=2, bridge_params={})
    assert asked.bridge is not None and asked.size_multiple == 2 * max(asked.encoder.out_strides)


# sha256 of the sorted "key:shape" lines of the state dict that segzoo before this change (main at 1ac11e6)
# built for cls(encoder=TimmEncoder("test_resnet"), num_classes=2): the layout its checkpoints hold
MAIN_LAYOUT = {"Unet": "4e96df8f9a79315e", "FPNUnet": "135a91348251474b"}


def _layout(state_dict):
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state_dict.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("cls", [Unet, FPNUnet], ids=lambda c: c.__name__)
def test_checkpoint_saved_with_the_old_default_bridge_loads(tmp_path, cls):
    torch.manual_seed(0)
    old = cls(encoder=TimmEncoder("test_resnet"), num_classes=2, bridge_params={}).eval()
    assert _layout(old.state_dict()) == MAIN_LAYOUT[cls.__name__]  # bridge_params={} rebuilds main's model
    # what the trainer wrote for a model with an encoder instance: format 1, no spec (a factory rebuilds it)
    path = save_checkpoint({"format_version": 1, "model_state_dict": old.state_dict(), "model_spec": None,
                            "epoch": 2}, tmp_path / "best.pth")
    with pytest.raises(CheckpointError) as err:  # the user's unchanged factory: the fix is named
        load_model(path, model_factory=lambda: cls(encoder=TimmEncoder("test_resnet"), num_classes=2))
    assert "bridge_params={}" in str(err.value) and "\n" not in str(err.value)
    loaded = load_model(path, model_factory=lambda: cls(encoder=TimmEncoder("test_resnet"), num_classes=2,
                                                        bridge_params={}))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))
    # the same file given as state_dict= to the constructor
    again = cls(encoder=TimmEncoder("test_resnet"), num_classes=2, bridge_params={}, state_dict=path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), old(x))
