"""Built-in callbacks."""

from segzoo._legacy import legacy_getattr
from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionAggregatorCallback, CriterionCallback
from segzoo.training.callbacks.early_stopping import EarlyStoppingCallback
from segzoo.training.callbacks.infer import InferCallback
from segzoo.training.callbacks.loggers import (
    ConsoleLogger,
    CSVLogger,
    ProgressBarLogger,
    TensorboardLogger,
    VerboseLogger,
)
from segzoo.training.callbacks.metrics import DiceCallback, IouCallback, LabelAccuracyCallback, MetricCallback
from segzoo.training.callbacks.optimizer import NonFiniteLossError, OptimizerCallback
from segzoo.training.callbacks.predictions import PredictionSaverCallback
from segzoo.training.callbacks.pruning import OptunaPruningCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback
from segzoo.training.callbacks.timer import TimerCallback
from segzoo.training.callbacks.trackers import MLflowLogger, WandbLogger


def __getattr__(name: str):
    """Catalyst 19.x callbacks segzoo does not carry raise an ImportError naming the replacement."""
    return legacy_getattr(__name__, name)


__all__ = ["CriterionCallback", "CriterionAggregatorCallback", "OptimizerCallback", "SchedulerCallback",
           "CheckpointCallback", "EarlyStoppingCallback", "DiceCallback", "IouCallback", "MetricCallback",
           "ConsoleLogger", "TensorboardLogger", "ProgressBarLogger", "PredictionSaverCallback",
           "NonFiniteLossError", "InferCallback", "TimerCallback", "VerboseLogger", "CSVLogger",
           "MLflowLogger", "WandbLogger", "OptunaPruningCallback", "LabelAccuracyCallback"]
