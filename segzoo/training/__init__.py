"""The callback trainer: runner, state, callbacks and the CALLBACKS registry."""

from segzoo._legacy import legacy_getattr
from segzoo.training.callback import (
    CALLBACKS,
    Callback,
    CallbackOrder,
    LoggerCallback,
    create_callback,
    list_callbacks,
    register_callback,
)
from segzoo.training.callbacks import NonFiniteLossError  # importing the package registers the built-ins
from segzoo.training.loop import seed_everything
from segzoo.training.runner import Runner, Stage
from segzoo.training.state import RunnerState
from segzoo.training.supervised import SupervisedRunner
from segzoo.training.train_settings import TrainSettings


def __getattr__(name: str):
    """Catalyst 19.x names segzoo does not carry raise an ImportError naming the replacement."""
    return legacy_getattr(__name__, name)


__all__ = ["SupervisedRunner", "Runner", "Stage", "TrainSettings", "RunnerState", "Callback", "CallbackOrder", "LoggerCallback",
           "CALLBACKS", "register_callback", "create_callback", "list_callbacks", "NonFiniteLossError",
           "seed_everything"]
