"""The callback trainer: runner, state, callbacks and the CALLBACKS registry."""

from segzoo._legacy import legacy_getattr
from segzoo.training.callback import Callback, CallbackOrder, LoggerCallback
from segzoo.training.callbacks import (
    CheckpointCallback,
    ConsoleLogger,
    CriterionAggregatorCallback,
    CriterionCallback,
    CSVLogger,
    DiceCallback,
    EarlyStoppingCallback,
    InferCallback,
    IouCallback,
    MetricCallback,
    NonFiniteLossError,
    OptimizerCallback,
    PredictionSaverCallback,
    ProgressBarLogger,
    SchedulerCallback,
    TensorboardLogger,
    TimerCallback,
)
from segzoo.training.runner import Runner, Stage, seed_everything
from segzoo.training.state import RunnerState
from segzoo.training.supervised import SupervisedRunner

# every built-in callback by name, for YAML configs
CALLBACKS = {cls.__name__: cls for cls in (
    CriterionCallback, CriterionAggregatorCallback, OptimizerCallback, SchedulerCallback, CheckpointCallback,
    EarlyStoppingCallback, DiceCallback, IouCallback, MetricCallback, ConsoleLogger, TensorboardLogger,
    ProgressBarLogger, PredictionSaverCallback, InferCallback, TimerCallback, CSVLogger)}
CALLBACKS["VerboseLogger"] = ProgressBarLogger  # Catalyst 19.x name


def __getattr__(name: str):
    """Catalyst 19.x names segzoo does not carry raise an ImportError naming the replacement."""
    return legacy_getattr(__name__, name)


__all__ = ["SupervisedRunner", "Runner", "Stage", "RunnerState", "Callback", "CallbackOrder", "LoggerCallback",
           "CALLBACKS", "NonFiniteLossError", "seed_everything"]
