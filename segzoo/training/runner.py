"""The runner: it sets a run up, then :class:`~segzoo.training.loop.TrainingLoop` walks epochs -> loaders ->
batches; everything else happens in callbacks.

:meth:`Runner.train` reads its settings (:class:`~segzoo.training.train_settings.TrainSettings`, given as
``settings=`` or as keywords), claims the log directory (:class:`~segzoo.training.logdir.LogdirClaim`),
sets up the state (:meth:`Runner._train_state`), and for each stage sets up its callbacks
(:meth:`Runner._start_stage`) and has the loop run its epochs.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from segzoo.device import resolve_device
from segzoo.errors import check_file_name
from segzoo.training import distributed as dist_utils
from segzoo.training.callback import Callback, sort_callbacks
from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionCallback
from segzoo.training.callbacks.loggers import ProgressBarLogger
from segzoo.training.callbacks.timer import TimerCallback
from segzoo.training.catalyst_args import check_infer_callbacks, fp16_to_amp, resume_of_callbacks
from segzoo.training.defaults import (
    CHECK_BATCHES,
    CHECK_EPOCHS,
    callback_items,
    name_run_callbacks,
    run_normalization,
    with_default_callbacks,
)
from segzoo.training.logdir import LogdirClaim, check_logdir_path
from segzoo.training.loop import Hooks, TrainingLoop, amp_dtype, prepare_model, seed_everything
from segzoo.training.optimizer_kernel import choose_run_kernels
from segzoo.training.resume import load_resume, restore_after_resume, start_point
from segzoo.training.run_choices import (
    AMP_DTYPES,
    apply_threads,
    auto_compile,
    compile_now,
    log_startup,
    resolve_precision,
    restored_threads,
)
from segzoo.training.run_settings import describe_run, optimizer_hparams
from segzoo.training.state import RunnerState
from segzoo.training.train_settings import TrainSettings


@dataclass
class Stage:
    """One stage of training (e.g. ``warmup`` then ``finetune``), run in list order.

    Unset fields (``None``) fall back to the arguments of :meth:`Runner.train`; the stage's
    callbacks are added to the run's. Epochs count from 1 within each stage, and checkpoints
    are named ``{stage}.{epoch}.pth``. Stateful callbacks (early stopping) start afresh in
    each stage; the best-checkpoint metric is tracked over the whole run. The stage's own
    callbacks and the defaults the runner adds (among them the default CheckpointCallback: its
    top-N and ``_metrics.json`` are the stage's) are new in each stage; the callbacks given to
    :meth:`Runner.train` are the same objects in every stage. A run resumed at any point goes on
    exactly as the uninterrupted run would (a stage that early stopping ended is not resumed: the
    next one starts).

    Args:
        name: stage name (unique within the run).
        num_epochs: epochs of the stage (>= 1).
        optimizer: the stage's optimizer.
        scheduler: the stage's scheduler.
        criterion: the stage's criterion.
        callbacks: extra callbacks of this stage.
    """

    name: str
    num_epochs: int
    optimizer: Any = None
    scheduler: Any = None
    criterion: Any = None
    callbacks: list[Callback] = field(default_factory=list)


def check_stages(stages: list[Stage] | None, num_epochs: int, check: bool) -> list[Stage]:
    """The run's stages: ``stages``, or one stage ``"train"`` of ``num_epochs``; at most 3 epochs each with ``check``.

    Raises:
        ValueError: not a Stage, ``num_epochs < 1``, a name unfit for file names, repeated names.
    """
    stages = list(stages) if stages else [Stage("train", num_epochs)]
    for s in stages:
        if not isinstance(s, Stage) or not isinstance(s.num_epochs, int) or s.num_epochs < 1:
            raise ValueError(f"each stage must be a Stage with num_epochs >= 1, got {s!r}")
        check_file_name(s.name, "a stage name (it names checkpoint files)")
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"stage names must be unique, got {[s.name for s in stages]}")
    if check:
        stages = [dataclasses.replace(s, num_epochs=min(s.num_epochs, CHECK_EPOCHS)) for s in stages]
    return stages


class Runner(abc.ABC):
    """Walks ``stages -> epochs -> loaders (dict order) -> batches`` and fires callbacks.

    Subclasses say how a batch becomes a dict (:meth:`batch_to_dict`) and how the model is
    called (:meth:`forward`); see :class:`~segzoo.training.supervised.SupervisedRunner`.
    Callbacks run sorted by ``order`` (ties keep insertion order); loggers run first on
    ``*_start`` events and last on ``*_end`` / ``on_exception``.

    After :meth:`train` or :meth:`infer`, ``runner.model`` is the model that ran,
    ``runner.state`` the final state, and ``runner.callbacks`` / ``runner.loggers`` the
    callbacks of the run (of its last stage) in run order, keyed as in Catalyst 19.x: a
    list's callbacks by their position after sorting by ``order`` (so in
    ``infer(callbacks=[CheckpointCallback(resume=...), InferCallback()])``, ``callbacks[0]``
    is the InferCallback), a dict's by their key, and the ones the runner added by
    ``"_criterion"``, ``"_optimizer"``, ``"_scheduler"``, ``"_saver"``, ``"console"``,
    ``"verbose"``, ``"_timer"``.

    Args:
        model: default model for :meth:`train` and :meth:`infer`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or ``None`` (CUDA if available).
    """

    def __init__(self, model: nn.Module | None = None, device: str | torch.device | None = None) -> None:
        self.model = model
        self.device = device
        self.state: RunnerState | None = None
        self.callbacks: OrderedDict[Any, Callback] = OrderedDict()
        self.loggers: OrderedDict[Any, Callback] = OrderedDict()

    @abc.abstractmethod
    def batch_to_dict(self, batch: Any) -> dict[str, Any]:
        """Turn one loader item into the ``state.input`` dict."""

    @abc.abstractmethod
    def forward(self, state: RunnerState, model: nn.Module) -> dict[str, Any]:
        """Run ``model`` on ``state.input``; returns the ``state.output`` dict."""

    def criterion_callback(self) -> Callback:
        """The CriterionCallback added when the user gives none."""
        return CriterionCallback()

    def train(self, model: nn.Module | None, criterion: Any, optimizer: Any, loaders: Mapping[str, Iterable],
              logdir: str | os.PathLike | LogdirClaim, callbacks: list[Callback] | Mapping[str, Callback] | None = None,
              scheduler: Any = None, *, stages: list[Stage] | None = None, settings: TrainSettings | None = None,
              **options: Any) -> RunnerState:
        """Train ``model`` over ``stages`` (or one stage ``"train"`` of ``num_epochs``), validating each epoch.

        Loaders whose name starts with ``"train"`` run backward and optimizer steps; the metrics of
        ``loaders[valid_loader]`` select the best checkpoint. Defaults added when absent:
        CriterionCallback, OptimizerCallback, SchedulerCallback (with a scheduler),
        CheckpointCallback, ConsoleLogger, and a tqdm progress bar when ``verbose``. Under
        ``torchrun`` the model is wrapped in DistributedDataParallel, DataLoaders are sharded with
        a DistributedSampler and rank 0 alone writes logs and checkpoints.

        Args:
            model: the model (default: the runner's).
            criterion: loss module (or a dict of them, picked by ``CriterionCallback(criterion_key=)``).
            optimizer: optimizer (or dict); may be ``None`` when every stage brings its own.
            loaders: ordered ``name -> DataLoader``; must include ``settings.valid_loader``.
            logdir: where checkpoints, ``log.txt``, TensorBoard logs and pictures go; or a held
                :class:`~segzoo.training.logdir.LogdirClaim` on it (``segzoo train`` claims the folder
                before writing ``config.yml`` there): then the runner claims nothing itself.
            callbacks: extra callbacks (list, or dict whose values are used).
            scheduler: LR scheduler (or dict).
            stages: list of :class:`Stage` for multi-stage training.
            settings: how the run runs (:class:`~segzoo.training.train_settings.TrainSettings`: ``num_epochs``,
                ``main_metric``, ``minimize_metric``, ``verbose``, ``resume``, ``valid_loader``, ``seed``,
                ``amp``, ``precision``, ``channels_last``, ``compile``, ``normalization``, ``nonfinite``,
                ``checkpoint_data``, ``check``, ``timeit``, ``overwrite_logdir``, ``run_config``).
            **options: the same settings as keywords (``num_epochs=10, main_metric="dice"``), when
                ``settings`` is not given; and Catalyst 19.x's ``fp16``: ``None``/``False`` off, ``True``
                or ``dict(opt_level="O1"|"O2")`` is ``amp=True`` (native autocast, said once in a
                warning), ``"O0"`` off, ``"O3"`` and other apex options raise; ``monitoring_params``
                (Alchemy / W&B): only ``None`` is accepted.

        Returns:
            The final :class:`RunnerState` (``valid_metrics``, ``best_valid_metric``, ...).

        Raises:
            TypeError: an unknown keyword, or a setting given both as a keyword and in ``settings``.
            ValueError: no model, no ``valid_loader`` loader, bad stages or options, a callback
                or Catalyst argument that cannot be honoured (e.g. ``monitoring_params``), ``overwrite_logdir``
                on files segzoo did not write, a ``resume`` whose run was given other settings (optimizer,
                scheduler, criterion, model, loaders, seed...; only epochs, device and the like may change).
            FileExistsError: another running training holds ``logdir``, or it holds files segzoo did not write.
            KeyError: ``main_metric`` is not computed on the valid loader.
            NonFiniteLossError: a non-finite loss with ``nonfinite="raise"``.
        """
        settings = TrainSettings.from_keywords(settings, **options)
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one to train() or to the runner's constructor")
        self.model = model  # stays on the runner: predict_loader(None, ...) / predict_batch use it
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError(f"loaders must be a non-empty dict name -> DataLoader, got {type(loaders).__name__}")
        if settings.valid_loader not in loaders:
            raise ValueError(f"training needs a {settings.valid_loader!r} loader to select checkpoints; "
                             f"got loaders {list(loaders)}")
        claim = logdir if isinstance(logdir, LogdirClaim) else None
        logdir = check_logdir_path(claim.path if claim is not None else logdir)
        if settings.nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {settings.nonfinite!r}")
        stages = check_stages(stages, settings.num_epochs, settings.check)
        items = callback_items(callbacks)
        given = [cb for _, cb in items]
        resume = resume_of_callbacks(given, settings.resume)
        if claim is not None:
            _check_claim(claim, resume, settings.overwrite_logdir)
        if settings.timeit and not any(isinstance(c, TimerCallback) for c in given):
            given.append(TimerCallback())
        if settings.seed is not None:
            seed_everything(settings.seed)

        normalization = run_normalization(settings.normalization, loaders, settings.valid_loader,
                                          getattr(model, "in_channels", None))
        state = self._train_state(model, logdir, dataclasses.replace(settings, normalization=normalization))
        if settings.compile == "auto":
            auto_compile(state, loaders, stages, self.batch_to_dict, self.forward)
        state.run_settings = describe_run(model, criterion, optimizer, scheduler, stages, loaders, seed=settings.seed,
                                          amp=settings.amp, main_metric=settings.main_metric,
                                          minimize_metric=settings.minimize_metric,
                                          valid_loader=settings.valid_loader, config=settings.run_config)
        if state.distributed:
            loaders = {k: dist_utils.shard_loader(v) if isinstance(v, DataLoader) else v for k, v in loaders.items()}
        start_stage, start_epoch, resumed = start_point(resume, state, stages)
        if claim is not None or not state.is_main_process:  # rank 0 alone writes: it alone claims
            claim = contextlib.nullcontext()
        else:
            claim = LogdirClaim(logdir, resume=resume, overwrite=settings.overwrite_logdir)
        loop = TrainingLoop(state, self.batch_to_dict, self.forward, loaders)
        # before a resumed run loads its optimizer state: it steps as the uninterrupted run did
        state.checkpoint_data["optimizer_kernel"] = choose_run_kernels([optimizer, *(s.optimizer for s in stages)])
        threads, threads_before = apply_threads()  # given back when train() ends, also on an error
        state.checkpoint_data["threads"] = {"threads": threads.threads, "source": threads.source}
        with restored_threads(threads_before), claim:
            if state.is_main_process:
                log_startup(state)
            for index in range(start_stage, len(stages)):
                stage = stages[index]
                stage = dataclasses.replace(stage, optimizer=_default(stage.optimizer, optimizer),
                                            scheduler=_default(stage.scheduler, scheduler),
                                            criterion=_default(stage.criterion, criterion))
                first = index == start_stage
                hooks = self._start_stage(state, stage, index, items, given, settings.verbose,
                                          resumed if first else None)
                loop.run_stage(hooks, start_epoch if first else 1)
        return state

    def _train_state(self, model: nn.Module, logdir: Path, settings: TrainSettings) -> RunnerState:
        """The run's state: device and processes, AMP, the prepared model, what checkpoints store."""
        state = RunnerState(logdir=logdir, main_metric=settings.main_metric,
                            minimize_metric=settings.minimize_metric, nonfinite=settings.nonfinite,
                            valid_loader=settings.valid_loader, channels_last=settings.channels_last,
                            max_batches=CHECK_BATCHES if settings.check else None)
        state.distributed, rank, state.world_size, state.device = dist_utils.setup(resolve_device(self.device))
        state.is_main_process = rank == 0
        state.checkpoint_data = {"normalization": dict(settings.normalization) if settings.normalization else None,
                                 **dict(settings.checkpoint_data or {})}
        precision = resolve_precision(settings.precision, settings.amp, state.device, measure=not state.distributed)
        state.checkpoint_data["precision"] = {"precision": precision.precision, "source": precision.source}
        state.amp_dtype = AMP_DTYPES[precision.precision]
        if state.amp_dtype == torch.float16 and state.device.type == "cuda":
            state.scaler = torch.amp.GradScaler("cuda")
        self.state = state
        state.model = prepare_model(model, state, compile_now(settings.compile))
        state.checkpoint_data["compile"] = {"compiled": bool(compile_now(settings.compile)),
                                            "source": f"compile={settings.compile!r}"}
        return state

    def _start_stage(self, state: RunnerState, stage: Stage, index: int, items: list[tuple[Any, Callback]],
                     given: list[Callback], verbose: bool, resumed: dict[str, Any] | None) -> Hooks:
        """Set ``stage`` up (its optimizer, scheduler, criterion and callbacks in the state, ``runner.callbacks``);
        ``resumed`` (the checkpoint, for the first stage of a resumed run) restores its state.

        Returns:
            The stage's callbacks with each event's calls worked out once, for the loop.
        """
        state.stage, state.stage_index, state.num_epochs = stage.name, index, stage.num_epochs
        state.optimizer = stage.optimizer
        state.checkpoint_data["optimizer_hparams"] = optimizer_hparams(state.optimizer)
        state.scheduler, state.criterion = stage.scheduler, stage.criterion
        state.callbacks = with_default_callbacks([*given, *stage.callbacks], state, self.criterion_callback, verbose)
        self.callbacks, self.loggers = name_run_callbacks(state.callbacks, items)
        state.loggers = self.loggers
        if resumed is not None:
            restore_after_resume(resumed, state, state.callbacks, given)
        return Hooks(state.callbacks)

    def infer(self, model: nn.Module | None, loaders: Mapping[str, Iterable],
              callbacks: list[Callback] | Mapping[Any, Callback] | None = None, verbose: bool = False,
              resume: str | os.PathLike | None = None, amp: bool | str = False, channels_last: bool | str | None = None,
              fp16: Any = None, check: bool = False, timeit: bool = False) -> RunnerState:
        """Run ``model`` over ``loaders`` in eval mode without gradients; callbacks see every batch.

        One stage ``"infer"`` of one epoch: callbacks get every event of :meth:`train`
        (stage, epoch, loader, batch; ``on_exception`` on errors). A
        ``CheckpointCallback(resume=...)`` loads its checkpoint's weights before the first batch
        (Catalyst 19.x's way) and writes nothing. Callbacks that only make sense while training
        (optimizer, scheduler, criterion, early stopping, TensorBoard, prediction pictures) are
        refused with a ValueError saying what to use instead, rather than silently not run.

        Args:
            model: the model (default: the runner's); it stays on the runner afterwards.
            loaders: ``name -> DataLoader``.
            callbacks: a list or a dict ``name -> Callback`` (see ``runner.callbacks`` in the
                class doc), e.g. ``InferCallback()`` to collect outputs, or metric callbacks whose
                loader values end up in ``state.epoch_metrics``.
            verbose: show a tqdm progress bar.
            resume: checkpoint (file or log directory) whose weights to load first; the same as
                ``CheckpointCallback(resume=...)`` (giving both with different paths raises).
            amp: autocast as in :meth:`train`.
            channels_last: as in :meth:`train`.
            fp16: Catalyst 19.x spelling of ``amp``, as in :meth:`train`.
            check: at most 4 batches per loader.
            timeit: add a :class:`~segzoo.training.callbacks.TimerCallback`.

        Returns:
            The final state (``state.epoch_metrics`` holds the metrics the callbacks computed).

        Raises:
            ValueError: no model, bad loaders, a callback or argument infer cannot honour.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one to infer() or to the runner's constructor")
        if not isinstance(loaders, Mapping):
            raise ValueError(f"loaders must be a dict name -> DataLoader, got {type(loaders).__name__}")
        items = callback_items(callbacks)
        given = [cb for _, cb in items]
        check_infer_callbacks(given, resume)
        resume = resume_of_callbacks(given, resume)
        amp = fp16_to_amp(fp16, amp)
        self.model = model
        state = RunnerState(stage="infer", num_epochs=1, epoch=1, global_epoch=1, channels_last=channels_last,
                            max_batches=CHECK_BATCHES if check else None)
        state.device = resolve_device(self.device)
        state.amp_dtype = amp_dtype(amp, state.device)
        state.model = prepare_model(model, state)
        added = ([ProgressBarLogger()] if verbose else []) + ([TimerCallback()] if timeit else [])
        everything = sort_callbacks(given + added)
        self.callbacks, self.loggers = name_run_callbacks(everything, items)
        state.loggers = self.loggers
        self.state = state
        saver = next((c for c in given if isinstance(c, CheckpointCallback) and c.resume), None)
        if saver is not None:
            saver.load_for_infer(state)
        elif resume is not None:
            load_resume(resume, state, None)
        # a CheckpointCallback's only job in infer is the loading above: it writes nothing
        state.callbacks = [c for c in everything if not isinstance(c, CheckpointCallback)]
        TrainingLoop(state, self.batch_to_dict, self.forward, loaders).run_infer(Hooks(state.callbacks))
        return state


def _default(value: Any, default: Any) -> Any:
    return value if value is not None else default


def _check_claim(claim: LogdirClaim, resume: Any, overwrite: bool) -> None:
    """A ``LogdirClaim`` given as ``logdir`` is held, and was made for this run's ``resume`` and ``overwrite_logdir``.

    Raises:
        ValueError: naming what differs.
    """
    if not claim.held:
        raise ValueError(f"logdir={claim!r} is not held: pass it inside its with block (with claim: runner.train(..., "
                         f"claim)), or pass the folder itself")
    if overwrite and not claim.overwrite:
        raise ValueError(f"overwrite_logdir=True, but logdir={claim!r} was claimed without overwrite: the claim "
                         f"applied the log-directory policy; claim it with overwrite=True")
    def where(path: Any) -> str | None:
        return None if path is None else os.path.realpath(path)

    if where(resume) != where(claim.resume):  # the claim let a resumed run into a folder holding its run
        raise ValueError(f"resume={str(resume)!r}, but logdir={claim!r} was claimed with resume="
                         f"{None if claim.resume is None else str(claim.resume)!r}; claim it for the run's resume")
