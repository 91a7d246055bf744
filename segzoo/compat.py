"""Catalyst 19.x names in one place, for scripts ported by changing their imports.

Everything a Catalyst 19.x segmentation script imported from ``catalyst.contrib.models.segmentation``,
``catalyst.dl`` / ``catalyst.dl.callbacks``, ``catalyst.contrib.criterion`` and
``catalyst.utils`` / ``catalyst.dl.utils.criterion`` (metrics) is importable from here under the same
name, and also from its segzoo home (``segzoo``, ``segzoo.training``,
``segzoo.training.callbacks``, ``segzoo.losses``, ``segzoo.metrics``). Names segzoo does not
carry raise an ImportError that names the replacement, e.g.::

    >>> from segzoo.compat import UnetSpec
    ImportError: UnetSpec (Catalyst's base class) is not in segzoo: customise Unet/Linknet/FPNUnet/PSPnet with ...

See the README section "Coming from Catalyst 19.x" for the full table.
"""

from __future__ import annotations

from segzoo._legacy import LEGACY, legacy_getattr
from segzoo.losses import (
    BCEDiceLoss,
    BCEIoULoss,
    DiceLoss,
    FocalLossBinary,
    IoULoss,
    LovaszLossBinary,
    LovaszLossMultiClass,
    LovaszLossMultiLabel,
)
from segzoo.metrics import dice, iou, jaccard
from segzoo.models import (
    FPNUnet,
    Linknet,
    MobileUnet,
    PSPnet,
    ResnetFPNUnet,
    ResNetLinknet,
    ResnetLinknet,
    ResnetPSPnet,
    ResNetUnet,
    ResnetUnet,
    Unet,
    UnetMetaSpec,
)
from segzoo.training import Callback, CallbackOrder, LoggerCallback, RunnerState, SupervisedRunner
from segzoo.training.callbacks import (
    CheckpointCallback,
    ConsoleLogger,
    CriterionAggregatorCallback,
    CriterionCallback,
    DiceCallback,
    EarlyStoppingCallback,
    InferCallback,
    IouCallback,
    MetricCallback,
    OptimizerCallback,
    SchedulerCallback,
    TensorboardLogger,
    TimerCallback,
    VerboseLogger,
)


def __getattr__(name: str):
    return legacy_getattr(__name__, name)


__all__ = [
    "Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet", "ResnetPSPnet",
    "MobileUnet", "ResNetUnet", "ResNetLinknet", "UnetMetaSpec", "SupervisedRunner", "Callback", "CallbackOrder", "LoggerCallback", "RunnerState",
    "CheckpointCallback", "ConsoleLogger", "CriterionAggregatorCallback", "CriterionCallback", "DiceCallback",
    "EarlyStoppingCallback", "InferCallback", "IouCallback", "MetricCallback", "OptimizerCallback",
    "SchedulerCallback", "TensorboardLogger", "TimerCallback", "VerboseLogger", "DiceLoss", "IoULoss",
    "BCEDiceLoss", "BCEIoULoss", "FocalLossBinary", "LovaszLossBinary", "LovaszLossMultiClass",
    "LovaszLossMultiLabel", "dice", "iou", "jaccard", "LEGACY", "legacy_getattr",
]
