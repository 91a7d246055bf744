"""smp's examples/binary_segmentation_intro.ipynb with ``import segzoo.smp as smp``.

The notebook's code cells, in order, changed only where marked ``# segzoo test:``: the Oxford-IIIT Pet download
is the ``oxford_pet_root`` fixture (the same folder layout, 5 tiny images), ``encoder_weights=None`` (the
notebook downloads ImageNet weights), 1 epoch, ``num_workers=0``, the Hub push and Hub id are a local folder,
and ``pytorch_lightning`` (not installed here) is the ``pl`` fixture's plain loop (conftest.py).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch


@pytest.mark.slow
def test_binary_segmentation_intro_runs_on_segzoo(pl, oxford_pet_root, tmp_path):
    # ---- cell 3
    import matplotlib.pyplot as plt
    from torch.optim import lr_scheduler
    from torch.utils.data import DataLoader

    import segzoo.smp as smp

    # ---- cell 6
    from segzoo.smp.datasets import SimpleOxfordPetDataset

    # ---- cell 7
    root = oxford_pet_root  # segzoo test: the fixture holds the downloaded layout
    SimpleOxfordPetDataset.download(root)

    # ---- cell 8
    train_dataset = SimpleOxfordPetDataset(root, "train")
    valid_dataset = SimpleOxfordPetDataset(root, "valid")
    test_dataset = SimpleOxfordPetDataset(root, "test")

    assert set(test_dataset.filenames).isdisjoint(set(train_dataset.filenames))
    assert set(test_dataset.filenames).isdisjoint(set(valid_dataset.filenames))
    assert set(train_dataset.filenames).isdisjoint(set(valid_dataset.filenames))

    print(f"Train size: {len(train_dataset)}")
    print(f"Valid size: {len(valid_dataset)}")
    print(f"Test size: {len(test_dataset)}")

    n_cpu = 0  # segzoo test: was os.cpu_count()
    train_dataloader = DataLoader(train_dataset, batch_size=64, shuffle=True, num_workers=n_cpu)
    valid_dataloader = DataLoader(valid_dataset, batch_size=64, shuffle=False, num_workers=n_cpu)
    test_dataloader = DataLoader(test_dataset, batch_size=64, shuffle=False, num_workers=n_cpu)

    # ---- cell 9
    sample = train_dataset[0]
    plt.subplot(1, 2, 1)
    plt.imshow(sample["image"].transpose(1, 2, 0))
    plt.subplot(1, 2, 2)
    plt.imshow(sample["mask"].squeeze())
    plt.close("all")

    # ---- cell 11
    EPOCHS = 1  # segzoo test: was 10
    T_MAX = EPOCHS * len(train_dataloader)

    # ---- cell 12
    class PetModel(pl.LightningModule):
        def __init__(self, arch, encoder_name, in_channels, out_classes, **kwargs):
            super().__init__()
            self.model = smp.create_model(
                arch, encoder_name=encoder_name, in_channels=in_channels, classes=out_classes, **kwargs,
            )
            params = smp.encoders.get_preprocessing_params(encoder_name)
            self.register_buffer("std", torch.tensor(params["std"]).view(1, 3, 1, 1))
            self.register_buffer("mean", torch.tensor(params["mean"]).view(1, 3, 1, 1))
            self.loss_fn = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
            self.training_step_outputs = []
            self.validation_step_outputs = []
            self.test_step_outputs = []

        def forward(self, image):
            image = (image - self.mean) / self.std
            mask = self.model(image)
            return mask

        def shared_step(self, batch, stage):
            image = batch["image"]
            assert image.ndim == 4
            h, w = image.shape[2:]
            assert h % 32 == 0 and w % 32 == 0
            mask = batch["mask"]
            assert mask.ndim == 4
            assert mask.max() <= 1.0 and mask.min() >= 0
            logits_mask = self.forward(image)
            loss = self.loss_fn(logits_mask, mask)
            prob_mask = logits_mask.sigmoid()
            pred_mask = (prob_mask > 0.5).float()
            tp, fp, fn, tn = smp.metrics.get_stats(pred_mask.long(), mask.long(), mode="binary")
            return {"loss": loss, "tp": tp, "fp": fp, "fn": fn, "tn": tn}

        def shared_epoch_end(self, outputs, stage):
            tp = torch.cat([x["tp"] for x in outputs])
            fp = torch.cat([x["fp"] for x in outputs])
            fn = torch.cat([x["fn"] for x in outputs])
            tn = torch.cat([x["tn"] for x in outputs])
            per_image_iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise")
            dataset_iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro")
            metrics = {f"{stage}_per_image_iou": per_image_iou, f"{stage}_dataset_iou": dataset_iou}
            self.log_dict(metrics, prog_bar=True)

        def training_step(self, batch, batch_idx):
            train_loss_info = self.shared_step(batch, "train")
            self.training_step_outputs.append(train_loss_info)
            return train_loss_info

        def on_train_epoch_end(self):
            self.shared_epoch_end(self.training_step_outputs, "train")
            self.training_step_outputs.clear()

        def validation_step(self, batch, batch_idx):
            valid_loss_info = self.shared_step(batch, "valid")
            self.validation_step_outputs.append(valid_loss_info)
            return valid_loss_info

        def on_validation_epoch_end(self):
            self.shared_epoch_end(self.validation_step_outputs, "valid")
            self.validation_step_outputs.clear()

        def test_step(self, batch, batch_idx):
            test_loss_info = self.shared_step(batch, "test")
            self.test_step_outputs.append(test_loss_info)
            return test_loss_info

        def on_test_epoch_end(self):
            self.shared_epoch_end(self.test_step_outputs, "test")
            self.test_step_outputs.clear()

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=2e-4)
            scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_MAX, eta_min=1e-5)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- cell 13
    model = PetModel("FPN", "resnet34", in_channels=3, out_classes=1,
                     encoder_weights=None)  # segzoo test: no ImageNet download

    # ---- cell 15
    trainer = pl.Trainer(max_epochs=EPOCHS, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=train_dataloader, val_dataloaders=valid_dataloader)

    # ---- cell 17, 18
    valid_metrics = trainer.validate(model, dataloaders=valid_dataloader, verbose=False)
    test_metrics = trainer.test(model, dataloaders=test_dataloader, verbose=False)
    print(valid_metrics, test_metrics)
    assert set(test_metrics[0]) == {"test_per_image_iou", "test_dataset_iou"}
    assert all(0.0 <= v <= 1.0 for v in [*valid_metrics[0].values(), *test_metrics[0].values()])

    # ---- cell 21
    smp_model = model.model
    save_directory = os.path.join(tmp_path, "ytzfhqs/oxford-pet-segmentation")  # segzoo test: a local folder
    smp_model.save_pretrained(
        save_directory=save_directory,
        push_to_hub=False,  # segzoo test: was True (an upload)
        metrics=test_metrics,
        dataset="Oxford Pet",
    )

    # ---- cell 22
    loaded_model = smp.from_pretrained(save_directory)
    print("Loaded model:", loaded_model.__class__.__name__)
    assert loaded_model.__class__.__name__ == "FPN"
    card = open(os.path.join(save_directory, "README.md"), encoding="utf-8").read()
    assert "Oxford Pet" in card and "test_dataset_iou" in card

    # ---- cell 24
    batch = next(iter(test_dataloader))
    with torch.inference_mode():
        model.eval()
        logits = model(batch["image"])
        assert torch.allclose(loaded_model((batch["image"] - model.mean) / model.std), logits, atol=1e-5)
    pr_masks = logits.sigmoid()
    for idx, (image, gt_mask, pr_mask) in enumerate(zip(batch["image"], batch["mask"], pr_masks)):
        if idx <= 4:
            plt.figure(figsize=(10, 5))
            plt.subplot(1, 3, 1)
            plt.imshow(image.numpy().transpose(1, 2, 0))
            plt.subplot(1, 3, 2)
            plt.imshow(gt_mask.numpy().squeeze())
            plt.subplot(1, 3, 3)
            plt.imshow(pr_mask.numpy().squeeze())
            plt.close("all")
        else:
            break

    # the numbers the notebook logs are smp's on the same logits (the README's claim), when smp is installed
    ref = pytest.importorskip("segmentation_models_pytorch")
    mask = batch["mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = model.loss_fn(logits, mask)
        theirs = ref.losses.DiceLoss(ref.losses.BINARY_MODE, from_logits=True)(logits, mask)
        assert torch.allclose(ours, theirs, atol=1e-5)
        pred = (logits.sigmoid() > 0.5).long()
        for reduction in ("micro-imagewise", "micro"):
            ours = smp.metrics.iou_score(*smp.metrics.get_stats(pred, mask.long(), mode="binary"), reduction=reduction)
            theirs = ref.metrics.iou_score(*ref.metrics.get_stats(pred, mask.long(), mode="binary"),
                                           reduction=reduction)
            assert torch.allclose(ours, theirs, atol=1e-5), reduction
