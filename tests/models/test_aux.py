"""``aux_params``: a classification head on every architecture, as smp's (issue 22 point 4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _models import tiny_model

import segzoo
from segzoo.architectures import ARCHITECTURES, resnet_architectures
from segzoo.heads import ClassificationHead

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from _h4_helpers import write_checkpoint  # noqa: E402

AUX = {"classes": 4}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_generic_architecture_returns_mask_and_label(arch):
    model = tiny_model(arch, num_classes=3, aux_params=AUX)
    mask, labels = model(torch.rand(2, 3, 64, 64))
    assert mask.shape == (2, 3, 64, 64) and labels.shape == (2, 4)
    assert model.aux_classes == 4 and isinstance(model.classification_head, ClassificationHead)


@pytest.mark.parametrize("arch", resnet_architectures())
def test_every_resnet_architecture_returns_mask_and_label(arch):
    model = tiny_model(f"resnet18_{arch}", num_classes=2, aux_params={"classes": 3, "pooling": "max"})
    mask, labels = model(torch.rand(2, 3, 64, 64))
    assert mask.shape == (2, 2, 64, 64) and labels.shape == (2, 3)


def test_without_aux_params_nothing_changes():
    plain = tiny_model("unet")
    aux = tiny_model("unet", aux_params=AUX)
    assert not hasattr(plain, "classification_head") and plain.aux_classes is None
    assert set(aux.state_dict()) - set(plain.state_dict()) == {"classification_head.3.weight",
                                                               "classification_head.3.bias"}
    aux.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(plain(x), aux(x)[0])
    assert "aux_params" not in plain.segzoo_spec["kwargs"]


def test_activation_and_label_ignores_padding_size():
    model = tiny_model("fpn_unet", aux_params={"classes": 5, "activation": "softmax"})
    _, labels = model(torch.rand(3, 3, 40, 72))
    assert torch.allclose(labels.sum(1), torch.ones(3))


@pytest.mark.parametrize("bad, match", [
    ({}, "missing key 'classes'"),
    ({"classes": 2, "pool": "avg"}, r"unknown key\(s\) \['pool'\]"),
    ({"classes": 2, "pooling": "mean"}, "'pooling' must be one of"),
    ({"classes": 0}, "'classes' must be an int"),
    ({"classes": 2, "dropout": 1.5}, "'dropout'"),
    ({"classes": 2, "activation": "relu"}, "'activation'"),
])
def test_bad_aux_params_is_one_line_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        segzoo.Unet(num_channels=8, num_blocks=2, aux_params=bad)
    assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="aux_params must be a dict"):
        segzoo.Unet(num_channels=8, num_blocks=2, aux_params=4)


def test_spec_checkpoint_and_pretrained_rebuild_the_head(tmp_path):
    model = tiny_model("resnet18_unet", aux_params={"classes": 3, "pooling": "max"})
    assert model.segzoo_spec["kwargs"]["aux_params"] == {"classes": 3, "pooling": "max"}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    write_checkpoint(tmp_path / "log", model)
    for loaded in (segzoo.load_model(tmp_path / "log"),
                   type(model).from_pretrained(model.save_pretrained(tmp_path / "pre"))):
        with torch.no_grad():
            got = loaded(x)
        assert isinstance(got, tuple) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_torchscript_keeps_the_pair():
    model = tiny_model("unet", aux_params=AUX)
    scripted = torch.jit.script(model)
    mask, labels = scripted(torch.rand(1, 3, 48, 48))
    assert mask.shape == (1, 2, 48, 48) and labels.shape == (1, 4)


def test_front_door_matches_smps_shapes_and_keys(tmp_path):
    ref = pytest.importorskip("segmentation_models_pytorch")
    ours = segzoo.smp.Unet("resnet18", encoder_weights=None, classes=2, aux_params=dict(classes=4)).eval()
    theirs = ref.Unet("resnet18", encoder_weights=None, classes=2, aux_params=dict(classes=4)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert isinstance(a, tuple) and [t.shape for t in a] == [t.shape for t in b]
    keys = {k for k in theirs.state_dict() if k.startswith("classification_head.")}
    assert keys == {k for k in ours.state_dict() if k.startswith("classification_head.")}
    assert ours.classification_head[2].p == theirs.classification_head[2].p  # smp's dropout default
    # the head computes what smp's computes from the same deepest feature
    ours.classification_head.load_state_dict(theirs.classification_head.state_dict())
    deepest = torch.rand(2, 512, 2, 2)
    assert torch.allclose(ours.classification_head(deepest), theirs.classification_head(deepest))
    again = segzoo.smp.Unet.from_pretrained(ours.save_pretrained(tmp_path / "smp")).eval()
    with torch.no_grad():
        assert torch.allclose(again(x)[1], ours(x)[1], atol=1e-5)
    porting = segzoo.smp.Unet("resnet18", encoder_weights=None, aux_params=dict(classes=2, dropout=None))
    assert isinstance(porting.classification_head[2], torch.nn.Identity)  # smp: dropout=None is no dropout
    with pytest.raises(ValueError, match=r"segzoo.smp.Unet: aux_params: unknown key\(s\) \['foo'\]"):
        segzoo.smp.Unet("resnet18", encoder_weights=None, aux_params=dict(classes=2, foo=1))
