"""smp's examples/dpt_inference_pretrained.ipynb with ``import segzoo.smp as smp``.

Changed only where marked ``# segzoo test:``: the Hub checkpoint ``smp-hub/dpt-large-ade20k`` is a local folder
that smp 0.6's own ``save_pretrained`` wrote (the ``smp_hub_folder`` fixture: a random ``DPT`` on
timm's tiny ``test_vit`` (the checkpoint: ``tu-vit_large_patch16_384``, ``dynamic_img_size=True``), with an albumentations transform saved beside it, as the smp-hub repositories hold), and the
image URL is a local JPEG (``ade_image``). smp's folder loads through ``segzoo.smp.from_smp`` when segzoo has a
``structure="smp"`` twin of the architecture and encoder (then the mask equals smp's); otherwise
``from_pretrained`` must refuse in one line naming the first smp key that does not map (README's smp section
lists it).
"""

from __future__ import annotations

import pytest
import torch

from segzoo.errors import CheckpointError


@pytest.mark.slow
def test_dpt_inference_runs_on_segzoo(smp_hub_folder, ade_image):
    # ---- cell 2
    import albumentations as A
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    import segzoo.smp as smp

    # ---- cell 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint, smp_model = smp_hub_folder("DPT", encoder_name="tu-test_vit", dynamic_img_size=True, classes=150)  # segzoo test: was "smp-hub/dpt-large-ade20k"
    try:
        model = smp.from_pretrained(checkpoint).eval().to(device)
    except CheckpointError as exc:  # segzoo test: no segzoo twin of smp's DPT on this encoder yet
        assert "\n" not in str(exc) and "does not map onto segzoo" in str(exc), exc
        with pytest.raises(ValueError, match="structure='smp'"):
            smp.DPT(encoder_name="tu-test_vit", dynamic_img_size=True, classes=150, encoder_weights=None, structure="smp")
        return
    preprocessing = A.Compose.from_pretrained(checkpoint)

    image = Image.open(ade_image)  # segzoo test: was Image.open(requests.get(url, stream=True).raw)

    image = np.array(image)
    normalized_image = preprocessing(image=image)["image"]
    input_tensor = torch.as_tensor(normalized_image)
    input_tensor = input_tensor.permute(2, 0, 1).unsqueeze(0)
    input_tensor = input_tensor.to(device)

    with torch.inference_mode():
        output_mask = model(input_tensor)
        # segzoo test: at a size other than the ViT's own, segzoo resizes the position embedding with its own
        # exportable resize, not timm's dynamic_img_size one: logits differ by about 1e-2 (README's smp section)
        expected = smp_model.to(device)(input_tensor)
        assert (output_mask - expected).abs().max() < 0.1 * expected.abs().max()
        assert (output_mask.argmax(1) == expected.argmax(1)).float().mean() > 0.97  # 0.987 measured (random weights)

    mask = torch.nn.functional.interpolate(output_mask, size=image.shape[:2], mode="bilinear", align_corners=False)
    mask = mask[0].argmax(0).cpu().numpy()
    assert mask.shape == image.shape[:2]

    # ---- cell 4
    plt.figure(figsize=(12, 6))
    plt.subplot(121)
    plt.imshow(image)
    plt.subplot(122)
    plt.imshow(mask)
    plt.close("all")
