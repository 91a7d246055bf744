"""Built-in callbacks."""

from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionAggregatorCallback, CriterionCallback
from segzoo.training.callbacks.early_stopping import EarlyStoppingCallback
from segzoo.training.callbacks.loggers import ConsoleLogger, CSVLogger, ProgressBarLogger, TensorboardLogger
from segzoo.training.callbacks.metrics import DiceCallback, IouCallback, MetricCallback
from segzoo.training.callbacks.optimizer import NonFiniteLossError, OptimizerCallback
from segzoo.training.callbacks.predictions import PredictionSaverCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback

__all__ = ["CriterionCallback", "CriterionAggregatorCallback", "OptimizerCallback", "SchedulerCallback",
           "CheckpointCallback", "EarlyStoppingCallback", "DiceCallback", "IouCallback", "MetricCallback",
           "ConsoleLogger", "TensorboardLogger", "ProgressBarLogger", "PredictionSaverCallback",
           "NonFiniteLossError", "CSVLogger"]
