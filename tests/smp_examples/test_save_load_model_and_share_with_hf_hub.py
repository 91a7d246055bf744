"""smp's examples/save_load_model_and_share_with_hf_hub.ipynb with ``import segzoo.smp as smp``.

Changed only where marked ``# segzoo test:``: ``smp.Unet(encoder_weights=None)`` (the notebook's ``smp.Unet()``
downloads ImageNet weights), folders under ``tmp_path``, and the Hub: ``notebook_login()`` is left out and
``push_to_hub=True`` runs offline (``HF_HUB_OFFLINE=1``), where it must fail in one line with the model saved;
the Hub repository id of the albumentations cells is a local folder.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.slow
def test_save_load_notebook_runs_on_segzoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    # ---- cell 1
    import segzoo.smp as smp

    # ---- cell 3
    model = smp.Unet(encoder_weights=None)  # segzoo test: was smp.Unet()
    model.save_pretrained("saved-model-dir/unet/")
    restored_model = smp.from_pretrained("saved-model-dir/unet/")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(restored_model.eval()(x), model.eval()(x))

    # ---- cell 5
    model = smp.Unet(encoder_weights=None)  # segzoo test: was smp.Unet()
    model.save_pretrained(
        "saved-model-dir/unet-with-metadata/",
        dataset="PASCAL VOC",
        metrics={"mIoU": 0.95, "accuracy": 0.96},
    )

    # ---- cell 6: !cat "saved-model-dir/unet-with-metadata/README.md"
    card = open("saved-model-dir/unet-with-metadata/README.md", encoding="utf-8").read()
    assert "PASCAL VOC" in card and '"mIoU": 0.95' in card and card.startswith("---\n")

    # ---- cell 9 (cell 8, notebook_login(), left out): offline, the push fails in one line, the folder is saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = smp.Unet(encoder_weights=None)  # segzoo test: was smp.Unet()
    with pytest.raises(ConnectionError, match="push_to_hub 'unet-with-metadata' failed") as info:
        model.save_pretrained(
            "qubvel-hf/unet-with-metadata/",
            push_to_hub=True,
            private=False,
            dataset="PASCAL VOC",
            metrics={"mIoU": 0.95, "accuracy": 0.96},
        )
    assert "\n" not in str(info.value)
    assert sorted(os.listdir("qubvel-hf/unet-with-metadata")) == ["README.md", "config.json", "model.safetensors"]

    # ---- cell 12, 13
    A = pytest.importorskip("albumentations")
    preprocessing_transform = A.Compose([A.Resize(256, 256), A.Normalize()])
    model = smp.Unet(encoder_weights=None)  # segzoo test: was smp.Unet()

    # ---- cell 14
    directory_or_repo_on_the_hub = "qubvel-hf/unet-with-transform"
    model.save_pretrained(directory_or_repo_on_the_hub)  # segzoo test: push_to_hub=True left out (an upload)
    preprocessing_transform.save_pretrained(directory_or_repo_on_the_hub)

    # ---- cell 16
    restored_model = smp.from_pretrained(directory_or_repo_on_the_hub)
    restored_transform = A.Compose.from_pretrained(directory_or_repo_on_the_hub)
    print(restored_transform)
    assert type(restored_model).__name__ == "Unet"
