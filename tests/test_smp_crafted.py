"""A crafted smp state dict (a scalar where smp has a layer's weight) is one CheckpointError line naming the key,
not an IndexError from deep inside the arguments' inference."""

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")

from segzoo.errors import CheckpointError  # noqa: E402
from segzoo.smp.statedict import from_smp  # noqa: E402

CASES = [("Linknet", "classification_head.3.weight", {"aux_params": {"classes": 2}}),
         ("Linknet", "segmentation_head.0.weight", {}),
         ("Linknet", "encoder.conv1.weight", {}),
         ("Unet", "decoder.blocks.0.conv1.0.weight", {}),
         ("FPN", "decoder.p5.weight", {}),
         ("PSPNet", "decoder.conv.0.weight", {}),
         ("DeepLabV3", "classification_head.3.weight", {"aux_params": {"classes": 2}}),
         ("MAnet", "decoder.center.top_conv.weight", {}),
         ("Segformer", "decoder.fuse_stage.0.weight", {})]


@pytest.mark.parametrize("arch, key, kwargs", CASES, ids=[f"{a}-{k}" for a, k, _ in CASES])
def test_a_scalar_weight_is_one_line_naming_its_key(tmp_path, arch, key, kwargs):
    sd = getattr(smp, arch)("resnet18", encoder_weights=None, classes=1, **kwargs).state_dict()
    assert key in sd
    sd[key] = torch.tensor(1.0)
    torch.save(sd, tmp_path / "crafted.pth")
    with pytest.raises(CheckpointError) as info:
        from_smp(tmp_path / "crafted.pth")
    assert key in str(info.value) and "\n" not in str(info.value), str(info.value)
