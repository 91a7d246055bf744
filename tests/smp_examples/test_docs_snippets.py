"""The code snippets of smp 0.6's docs (docs/*.rst, README.md's usage, the metrics module's example) with
``import segzoo.smp as smp``.

Each snippet is the docs' text with the import changed, ``encoder_weights="imagenet"`` -> ``None`` (a
download; marked ``# was imagenet``), 64x64 inputs where the docs use 256, names the docs leave undefined
(``x``, ``dataloader``, ``optimizer``) given by the test, and Hub ids as local folders. ``push_to_hub=True`` runs
offline and must fail in one line with the folder saved. Snippets whose result is a number (metrics) are run
with smp 0.6 too, on the same inputs, and must agree within 1e-5.
"""

from __future__ import annotations

import warnings

import pytest
import torch

SNIPPETS: dict[str, str] = {
    "quickstart/unet": """
import segzoo.smp as smp

model = smp.Unet(
    encoder_name="resnet34",        # choose encoder, e.g. mobilenet_v2 or efficientnet-b7
    encoder_weights=None,           # was imagenet
    in_channels=1,                  # model input channels (1 for gray-scale images, 3 for RGB, etc.)
    classes=3,                      # model output channels (number of classes in your dataset)
)
assert model(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)
""",
    "quickstart/create_model_mit": """
import segzoo.smp as smp

model = smp.create_model(
    arch="fpn",                     # name of the architecture, e.g. 'Unet'/ 'FPN' / etc. Case INsensitive!
    encoder_name="mit_b0",
    encoder_weights=None,           # was imagenet
    in_channels=1,
    classes=3,
)
assert model(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)
""",
    "quickstart/preprocessing": """
from segzoo.smp.encoders import get_preprocessing_fn

preprocess_input = get_preprocessing_fn('resnet18', pretrained='imagenet')
assert preprocess_input(image).shape == (64, 64, 3)
""",
    "quickstart/training_loop": """
import segzoo.smp as smp

model = smp.Unet("resnet18", encoder_weights=None, classes=3)
loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
optimizer = torch.optim.Adam(model.parameters())
for images, gt_masks in dataloader:

    predicted_mask = model(images)
    loss = loss_fn(predicted_mask, gt_masks)

    loss.backward()
    optimizer.step()
""",
    "encoders/unet_resnet34": """
from segzoo.smp import Unet

# Initialize Unet with ResNet34 encoder pre-trained on ImageNet
model = Unet(encoder_name="resnet34", encoder_weights=None)  # was imagenet
""",
    "insights/freeze_encoder": """
import segzoo.smp as smp

model = smp.Unet("resnet34", classes=2, encoder_weights=None)  # was imagenet (the default)

# Freeze encoder: stops gradient updates and freezes normalization layer stats
model.freeze_encoder()
assert not any(p.requires_grad for p in model.encoder.parameters())

# Unfreeze encoder: re-enables training for encoder parameters and normalization layers
model.unfreeze_encoder()
assert all(p.requires_grad for p in model.encoder.parameters())
""",
    "readme/fpn_in_channels": """
import segzoo.smp as smp

model = smp.FPN('resnet34', in_channels=1, encoder_weights=None)  # was imagenet (the default)
mask = model(torch.ones([1, 1, 64, 64]))
""",
    "readme/aux_params": """
import segzoo.smp as smp

aux_params=dict(
    pooling='avg',             # one of 'avg', 'max'
    dropout=0.5,               # dropout ratio, default is None
    activation='sigmoid',      # activation function, default is None
    classes=4,                 # define number of output labels
)
model = smp.Unet('resnet34', classes=4, aux_params=aux_params, encoder_weights=None)  # was imagenet
mask, label = model(x)
assert mask.shape == (2, 4, 64, 64) and label.shape == (2, 4)
""",
    "readme/encoder_depth": """
import segzoo.smp as smp

model = smp.Unet('resnet34', encoder_depth=4, encoder_weights=None)  # was imagenet
assert model(x).shape == (2, 1, 64, 64)
""",
    "models/dpt_dynamic_img_size": """
import segzoo.smp as smp

model = smp.DPT(encoder_name="tu-test_vit", encoder_weights=None, classes=2, dynamic_img_size=True)
assert model(torch.rand(1, 3, 64, 96)).shape == (1, 2, 64, 96)
""",
    "save_load/save_and_load": """
import segzoo.smp as smp

model = smp.Unet('resnet34', encoder_weights=None)  # was imagenet
model.save_pretrained('./my_model')
model = smp.from_pretrained('./my_model')
model = smp.from_pretrained('./my_model', classes=5, strict=False)
assert model(x).shape == (2, 5, 64, 64)
""",
    "save_load/metrics_and_dataset": """
import segzoo.smp as smp

model = smp.Unet('resnet34', encoder_weights=None)  # was imagenet
model.save_pretrained('./my_model', metrics={'accuracy': 0.95}, dataset='my_dataset')
card = open('./my_model/README.md', encoding='utf-8').read()
assert '"accuracy": 0.95' in card and 'my_dataset' in card
""",
    "save_load/push_to_hub_offline": """
import segzoo.smp as smp

model = smp.Unet('resnet34', encoder_weights=None)  # was imagenet
try:
    model.save_pretrained('username/my-model', push_to_hub=True, metrics={'accuracy': 0.95}, dataset='my_dataset')
except ConnectionError as exc:
    assert "\\n" not in str(exc) and "push_to_hub 'my-model' failed" in str(exc)
assert os.path.isfile('username/my-model/model.safetensors')
""",
    "save_load/with_albumentations": """
import albumentations as A
import segzoo.smp as smp

preprocessing_transform = A.Compose([
    A.Resize(256, 256),
    A.Normalize()
])
model = smp.Unet(encoder_weights=None)  # was smp.Unet() (imagenet)
directory_or_repo_on_the_hub = "qubvel-hf/unet-with-transform"
model.save_pretrained(directory_or_repo_on_the_hub)  # push_to_hub=True left out
preprocessing_transform.save_pretrained(directory_or_repo_on_the_hub)
restored_model = smp.from_pretrained(directory_or_repo_on_the_hub)
restored_transform = A.Compose.from_pretrained(directory_or_repo_on_the_hub)
print(restored_transform)
""",
    "metrics/functional_example": """
import segzoo.smp as smp

# lets assume we have multilabel prediction for 3 classes
output = torch.rand([10, 3, 64, 64])
target = torch.rand([10, 3, 64, 64]).round().long()

tp, fp, fn, tn = smp.metrics.get_stats(output, target, mode='multilabel', threshold=0.5)

iou_score = smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro")
f1_score = smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro")
f2_score = smp.metrics.fbeta_score(tp, fp, fn, tn, beta=2, reduction="micro")
accuracy = smp.metrics.accuracy(tp, fp, fn, tn, reduction="macro")
recall = smp.metrics.recall(tp, fp, fn, tn, reduction="micro-imagewise")
""",
    "losses/constants": """
import segzoo.smp as smp

modes = (smp.losses.BINARY_MODE, smp.losses.MULTICLASS_MODE, smp.losses.MULTILABEL_MODE)
""",
}

#: snippets whose numbers are compared with smp 0.6's (same seed, same inputs)
COMPARED = {"metrics/functional_example": ("iou_score", "f1_score", "f2_score", "accuracy", "recall"),
            "losses/constants": ("modes",)}


def _run(code: str, smp_module_name: str) -> dict:
    import os

    import numpy as np

    if smp_module_name != "segzoo.smp":
        code = code.replace("segzoo.smp", smp_module_name)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    namespace = {"torch": torch, "os": os, "x": torch.rand(2, 3, 64, 64, generator=g),
                 "image": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),
                 "dataloader": [(torch.rand(2, 3, 64, 64, generator=g), torch.randint(0, 3, (2, 64, 64), generator=g))]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"<smp docs: {smp_module_name}>", "exec"), namespace)  # noqa: S102 (the docs' text)
    return namespace


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_smp_docs_snippet_runs_on_segzoo(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = _run(SNIPPETS[name], "segzoo.smp")
    if name not in COMPARED:
        return
    pytest.importorskip("segmentation_models_pytorch")
    theirs = _run(SNIPPETS[name], "segmentation_models_pytorch")
    for var in COMPARED[name]:
        a, b = ours[var], theirs[var]
        if isinstance(a, torch.Tensor):
            assert torch.allclose(a.double(), b.double(), atol=1e-5), var
        else:
            assert a == b, var
