"""The core assembly of a run's callbacks: the defaults the runner adds, and the names it files them under.

:meth:`~segzoo.training.Runner.train` adds the callbacks every run needs when none of their kind is
given (criterion, optimizer, scheduler, checkpoints, console), sorts them by ``order``, and keys
them in ``runner.callbacks`` / ``runner.loggers`` as Catalyst 19.x's SupervisedExperiment did.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import ConcatDataset, Subset

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD
from segzoo.training.callback import Callback, LoggerCallback, sort_callbacks
from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionCallback
from segzoo.training.callbacks.loggers import ConsoleLogger, ProgressBarLogger, TensorboardLogger
from segzoo.training.callbacks.optimizer import OptimizerCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback
from segzoo.training.callbacks.timer import TimerCallback
from segzoo.training.state import RunnerState

# check=True, as Catalyst 19.x: batches 0..3 of each loader, and at most 3 epochs per stage
CHECK_BATCHES = 4
CHECK_EPOCHS = 3

# names of the callbacks the runner adds, as Catalyst 19.x's SupervisedExperiment named them
DEFAULT_NAMES: dict[type, str] = {
    CriterionCallback: "_criterion", OptimizerCallback: "_optimizer", SchedulerCallback: "_scheduler",
    CheckpointCallback: "_saver", ConsoleLogger: "console", TensorboardLogger: "tensorboard",
    ProgressBarLogger: "verbose", TimerCallback: "_timer",
}


def callback_items(callbacks: Any) -> list[tuple[Any, Callback]]:
    """``(name, callback)`` pairs as Catalyst 19.x keyed them.

    A list is sorted by ``order`` and keyed by position (``0, 1, ...``); a dict keeps its keys.

    Raises:
        TypeError: not a list/tuple/dict, or an item that is not a :class:`Callback`.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, Mapping):
        items = list(callbacks.items())
    elif isinstance(callbacks, (list, tuple)):
        items = list(enumerate(callbacks))
    else:
        raise TypeError(f"callbacks must be a list or a dict name -> Callback, got {type(callbacks).__name__}")
    for key, cb in items:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{key!r}] is a {type(cb).__name__}, not a segzoo Callback")
    if not isinstance(callbacks, Mapping):
        items = list(enumerate(sort_callbacks([cb for _, cb in items])))
    return items


def name_run_callbacks(run: list[Callback], items: list[tuple[Any, Callback]]
                       ) -> tuple[OrderedDict[Any, Callback], OrderedDict[Any, Callback]]:
    """``(runner.callbacks, runner.loggers)``: the run's callbacks in run order, keyed by name.

    Callbacks the user gave keep their key; those the runner added get Catalyst's default
    names (``_criterion``, ``_optimizer``, ``_scheduler``, ``_saver``, ``console``, ...), others
    their class name (with ``:2``, ``:3`` ... when repeated).
    """
    given = {id(cb): key for key, cb in items}
    callbacks: OrderedDict[Any, Callback] = OrderedDict()
    loggers: OrderedDict[Any, Callback] = OrderedDict()
    for cb in run:
        target = loggers if isinstance(cb, LoggerCallback) else callbacks
        key = given.get(id(cb))
        if key is None:
            base = DEFAULT_NAMES.get(type(cb), type(cb).__name__)
            key, n = base, 1
            while key in callbacks or key in loggers:
                n += 1
                key = f"{base}:{n}"
        target[key] = cb
    return callbacks, loggers


def with_default_callbacks(callbacks: list[Callback], state: RunnerState, criterion_callback: Callable[[], Callback],
                           verbose: bool) -> list[Callback]:
    """``callbacks`` plus the defaults missing among them, sorted by ``order`` (Catalyst 19.x's SupervisedExperiment).

    Added when no callback of the kind is given: ``criterion_callback()`` (with a criterion),
    OptimizerCallback (with an optimizer), SchedulerCallback (with a scheduler),
    CheckpointCallback, ConsoleLogger, and a ProgressBarLogger when ``verbose``.
    """
    cbs = list(callbacks)

    def has(kind: type) -> bool:
        return any(isinstance(c, kind) for c in cbs)

    if state.criterion is not None and not has(CriterionCallback):
        cbs.append(criterion_callback())
    if state.optimizer is not None and not has(OptimizerCallback):
        cbs.append(OptimizerCallback())
    if state.scheduler is not None and not has(SchedulerCallback):
        cbs.append(SchedulerCallback())
    if not has(CheckpointCallback):
        cbs.append(CheckpointCallback())
    if not has(ConsoleLogger):
        cbs.append(ConsoleLogger())
    if verbose and not has(ProgressBarLogger):
        cbs.append(ProgressBarLogger())
    return sort_callbacks(cbs)


def _dataset_mean_std(dataset: Any) -> tuple[list[float], list[float]] | None:
    """The ``mean`` / ``std`` a dataset normalizes with (segzoo's datasets), through Subset/ConcatDataset.

    Raises:
        ValueError: the datasets of a ConcatDataset normalize differently.
    """
    for _ in range(32):  # Subset of Subset ...: a bounded walk
        if isinstance(dataset, Subset):
            dataset = dataset.dataset
            continue
        if isinstance(dataset, ConcatDataset):
            found = [_dataset_mean_std(d) for d in dataset.datasets]
            if any(f != found[0] for f in found):
                raise ValueError(f"the train loader's ConcatDataset mixes normalizations {found}: pass "
                                 f"normalization={{'mean': [...], 'std': [...]}} to train() for the one to record")
            return found[0] if found else None
        break
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    try:
        return [float(v) for v in mean], [float(v) for v in std]
    except TypeError:  # no mean/std, or not sequences of numbers
        return None


def run_normalization(given: Mapping[str, Any] | None, loaders: Mapping[str, Any], valid_loader: str,
                      in_channels: int | None) -> dict[str, list[float]] | None:
    """The input normalization a run records in its checkpoints (what ``segzoo predict`` then uses).

    ``given`` (``normalization=``) if set; else the train loader's dataset's ``mean`` / ``std`` (segzoo's
    datasets; looked up through ``Subset`` / ``ConcatDataset``; the train loader is ``"train"``, or the first
    loader other than ``valid_loader``); else ImageNet's, with one warning saying it was assumed. A model
    with other than 3 input channels gets no assumed value (``None``, and the warning says so).

    Raises:
        ValueError: a ConcatDataset whose datasets normalize differently.
    """
    if given:
        return dict(given)
    names = [k for k in loaders if k != valid_loader]
    name = "train" if "train" in loaders else (names[0] if names else valid_loader)
    found = _dataset_mean_std(getattr(loaders[name], "dataset", None))
    if found is not None:
        return {"mean": found[0], "std": found[1]}
    if in_channels not in (None, 3):
        warnings.warn(f"the {name!r} loader's dataset has no mean/std and normalization= was not given: no input "
                      f"normalization recorded in the checkpoints (pass normalization={{'mean': [...], 'std': [...]}})",
                      stacklevel=3)
        return None
    warnings.warn(f"the {name!r} loader's dataset has no mean/std and normalization= was not given: recording "
                  f"ImageNet's mean {list(IMAGENET_MEAN)} / std {list(IMAGENET_STD)} as the inputs' normalization "
                  f"(pass normalization={{'mean': [...], 'std': [...]}} to train() if yours differs)", stacklevel=3)
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
