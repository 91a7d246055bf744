"""The runner: stages -> epochs -> loaders -> batches, everything else in callbacks."""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from segzoo.checkpoint import clean_state_dict, load_checkpoint
from segzoo.training import distributed as dist_utils
from segzoo.training.callback import Callback, LoggerCallback, sort_callbacks
from segzoo.training.callbacks.checkpoint import CheckpointCallback, callback_key, set_rng_state
from segzoo.training.callbacks.criterion import CriterionCallback
from segzoo.training.callbacks.loggers import ConsoleLogger, ProgressBarLogger
from segzoo.training.callbacks.optimizer import OptimizerCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback
from segzoo.training.state import RunnerState

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Stage:
    """One stage of training (e.g. ``warmup`` then ``finetune``).

    Unset fields fall back to the arguments of :meth:`SupervisedRunner.train`.

    Args:
        name: stage name (used in checkpoint names ``{stage}.{epoch}.pth``).
        num_epochs: epochs of the stage.
        optimizer: the stage's optimizer.
        scheduler: the stage's scheduler.
        criterion: the stage's criterion.
        callbacks: extra callbacks of this stage (added to the run's callbacks).
    """

    name: str
    num_epochs: int
    optimizer: Any = None
    scheduler: Any = None
    criterion: Any = None
    callbacks: list[Callback] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def _move(value: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, Mapping):
        return {k: _move(v, device, channels_last) for k, v in value.items()}
    return value


class SupervisedRunner:
    """Trains, evaluates and predicts with a model whose batches are dicts or ``(features, targets)`` tuples.

    Args:
        model: default model for :meth:`train`, :meth:`infer`, :meth:`predict_loader`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` (CUDA if available).
        input_key: batch key of the model input (B, C, H, W).
        output_key: key under which the model's output (B, K, H, W) is stored in ``state.output``.
        input_target_key: batch key of the targets.

    Example:
        >>> runner = SupervisedRunner()
        >>> runner.train(model, criterion, optimizer, {"train": tl, "valid": vl}, logdir="logs/run",
        ...              callbacks=[DiceCallback(threshold=0.5)], num_epochs=10,
        ...              main_metric="dice", minimize_metric=False)
    """

    def __init__(self, model: nn.Module | None = None, device: str | torch.device | None = None,
                 input_key: str = "features", output_key: str = "logits", input_target_key: str = "targets") -> None:
        self.model = model
        self.device = device
        self.input_key, self.output_key, self.input_target_key = input_key, output_key, input_target_key
        self.state: RunnerState | None = None

    # ---- helpers ---------------------------------------------------------------------------------

    def _batch(self, batch: Any) -> dict[str, Any]:
        if isinstance(batch, Mapping):
            if self.input_key not in batch:
                raise KeyError(f"batch has no {self.input_key!r} key (keys: {sorted(batch)}); "
                               f"set SupervisedRunner(input_key=...)")
            return dict(batch)
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return {self.input_key: batch[0], self.input_target_key: batch[1]}
        raise TypeError(f"a batch must be a dict or a (features, targets) pair, got {type(batch).__name__}")

    def _autocast(self, state: RunnerState):
        if state.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)

    def _fire(self, callbacks: list[Callback], event: str, state: RunnerState) -> None:
        loggers = [c for c in callbacks if isinstance(c, LoggerCallback)]
        others = [c for c in callbacks if not isinstance(c, LoggerCallback)]
        ordered = loggers + others if event.endswith("_start") else others + loggers
        for cb in ordered:
            getattr(cb, event)(state)

    # ---- the loop ----------------------------------------------------------------------------------

    def _run_loader(self, state: RunnerState, loader: Iterable, callbacks: list[Callback],
                    model: nn.Module, channels_last: bool) -> None:
        state.loader_len = len(loader)
        model.train(state.need_backward)
        state.loader_metrics = {}
        totals: dict[str, float] = {}
        count = 0
        self._fire(callbacks, "on_loader_start", state)
        with torch.set_grad_enabled(state.need_backward):
            for state.batch_index, batch in enumerate(loader):
                state.input = _move(self._batch(batch), state.device, channels_last)
                features = state.input[self.input_key]
                state.batch_size = int(features.shape[0]) if isinstance(features, torch.Tensor) else 1
                state.loss, state.batch_metrics = {}, {}
                self._fire(callbacks, "on_batch_start", state)
                with self._autocast(state):
                    state.output = {self.output_key: model(features)}
                self._fire(callbacks, "on_batch_end", state)
                for k, v in state.batch_metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * state.batch_size
                count += state.batch_size
        if state.distributed:
            keys = sorted(totals)
            packed = dist_utils.all_reduce_sum(torch.tensor([totals[k] for k in keys] + [count],
                                                            dtype=torch.float64), state)
            totals, count = dict(zip(keys, packed[:-1].tolist())), packed[-1].item()
        state.loader_metrics = {k: v / max(count, 1) for k, v in totals.items()}
        self._fire(callbacks, "on_loader_end", state)
        state.epoch_metrics[state.loader_name] = dict(state.loader_metrics)

    def _stage_callbacks(self, given: list[Callback], stage: Stage, state: RunnerState,
                         verbose: bool) -> list[Callback]:
        cbs = list(given) + list(stage.callbacks)

        def has(kind: type) -> bool:
            return any(isinstance(c, kind) for c in cbs)

        if state.criterion is not None and not has(CriterionCallback):
            cbs.append(CriterionCallback(self.input_target_key, self.output_key))
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
        cbs = sort_callbacks(cbs)
        for cb in cbs:
            if isinstance(cb, CheckpointCallback):
                cb.callbacks = cbs
        return cbs

    def _prepare_model(self, model: nn.Module, state: RunnerState, channels_last: bool, compile: bool | dict,
                       rank: int) -> nn.Module:
        model = model.to(state.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if state.distributed:
            ids = [state.device.index] if state.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if compile:
            model = torch.compile(model, **(compile if isinstance(compile, dict) else {}))
        return model

    def train(self, model: nn.Module | None, criterion: Any, optimizer: Any, loaders: Mapping[str, Iterable],
              logdir: str | os.PathLike, callbacks: list[Callback] | Mapping[str, Callback] | None = None,
              scheduler: Any = None, num_epochs: int = 1, main_metric: str = "loss", minimize_metric: bool = True,
              verbose: bool = False, resume: str | os.PathLike | None = None, valid_loader: str = "valid",
              stages: list[Stage] | None = None, seed: int | None = None, amp: bool | str = False,
              channels_last: bool = False, compile: bool | dict = False,
              normalization: Mapping[str, list[float]] | None = None, nonfinite: str = "raise",
              checkpoint_data: Mapping[str, Any] | None = None) -> RunnerState:
        """Train ``model`` over ``stages`` (or one stage of ``num_epochs``), validating every epoch.

        Loaders whose name starts with ``"train"`` run backward; ``loaders[valid_loader]`` gives
        the metrics that pick the best checkpoint. Defaults added when absent: CriterionCallback,
        OptimizerCallback, SchedulerCallback (with a scheduler), CheckpointCallback, ConsoleLogger,
        and a progress bar when ``verbose``.

        Args:
            model: the model (default: the runner's); batches are dicts or ``(features, targets)``.
            criterion: loss module (or a dict of them for several CriterionCallbacks).
            optimizer: optimizer (or dict).
            loaders: ordered ``name -> DataLoader``; must include ``valid_loader``.
            logdir: where checkpoints, logs and pictures go.
            callbacks: extra callbacks (list or dict).
            scheduler: LR scheduler (or dict).
            num_epochs: epochs of the single stage when ``stages`` is not given.
            main_metric: valid metric that selects ``best.pth`` (e.g. ``"dice"``).
            minimize_metric: lower ``main_metric`` is better.
            verbose: show tqdm progress bars.
            resume: a ``*_full.pth`` (or ``last``/``best`` light) checkpoint to continue from.
            valid_loader: name of the validation loader.
            stages: list of :class:`Stage` for multi-stage training.
            seed: seed python, numpy and torch first (reproducible CPU runs).
            amp: ``False``, ``True`` (fp16 on CUDA, bf16 on CPU), ``"fp16"`` or ``"bf16"`` autocast;
                fp16 on CUDA uses a GradScaler.
            channels_last: move the model and 4-D inputs to channels_last.
            compile: wrap the model with ``torch.compile`` (a dict gives its options).
            normalization: ``{"mean": [...], "std": [...]}`` of the inputs, stored in checkpoints for prediction.
            nonfinite: ``"raise"`` (stop with an error naming the loss) or ``"skip"`` (skip such batches).
            checkpoint_data: extra plain data stored in every checkpoint.

        Returns:
            The final :class:`RunnerState`.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one to train() or to SupervisedRunner(model=...)")
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError("loaders must be a non-empty dict name -> DataLoader")
        if valid_loader not in loaders:
            raise ValueError(f"training needs a {valid_loader!r} loader to select checkpoints; "
                             f"got loaders {list(loaders)}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        stages = list(stages) if stages else [Stage("train", num_epochs)]
        for s in stages:
            if not isinstance(s, Stage) or not isinstance(s.num_epochs, int) or s.num_epochs < 1:
                raise ValueError(f"each stage must be a Stage with num_epochs >= 1, got {s!r}")
        if len({s.name for s in stages}) != len(stages):
            raise ValueError(f"stage names must be unique, got {[s.name for s in stages]}")
        given = list(callbacks.values()) if isinstance(callbacks, Mapping) else list(callbacks or [])
        if seed is not None:
            seed_everything(seed)

        state = RunnerState(logdir=Path(logdir), main_metric=main_metric, minimize_metric=minimize_metric,
                            nonfinite=nonfinite)
        state.distributed, rank, state.world_size, device = dist_utils.setup(resolve_device(self.device))
        state.device = device
        state.is_main_process = rank == 0
        state.checkpoint_data = {"normalization": dict(normalization) if normalization else None,
                                 **dict(checkpoint_data or {})}
        if amp:
            key = amp if isinstance(amp, str) else ("fp16" if state.device.type == "cuda" else "bf16")
            if key not in AMP_DTYPES:
                raise ValueError(f"amp must be False, True, 'fp16' or 'bf16', got {amp!r}")
            state.amp_dtype = AMP_DTYPES[key]
            if key == "fp16" and state.device.type == "cuda":
                state.scaler = torch.amp.GradScaler("cuda")
        if state.distributed:
            loaders = {k: dist_utils.shard_loader(v) if isinstance(v, DataLoader) else v for k, v in loaders.items()}
        if state.is_main_process:
            Path(logdir).mkdir(parents=True, exist_ok=True)
        self.state = state
        state.model = self._prepare_model(model, state, channels_last, compile, rank)
        state.criterion = criterion

        start_stage, start_epoch, resumed = 0, 1, None
        if resume is not None:
            resumed = self._load_resume(resume, state, stages, optimizer, scheduler)
            start_stage, start_epoch = resumed["stage_index"], resumed["epoch"] + 1
            if start_epoch > stages[start_stage].num_epochs:
                start_stage, start_epoch = start_stage + 1, 1

        for state.stage_index in range(start_stage, len(stages)):
            stage = stages[state.stage_index]
            state.stage, state.num_epochs = stage.name, stage.num_epochs
            state.optimizer = stage.optimizer or optimizer
            state.scheduler = stage.scheduler or scheduler
            state.criterion = stage.criterion or criterion
            cbs = self._stage_callbacks(given, stage, state, verbose)
            first = state.stage_index == start_stage
            if first and resumed is not None:
                self._restore_after_resume(resumed, state, cbs)
            state.epoch = start_epoch - 1 if first else 0
            state.stop_training = False
            try:
                self._fire(cbs, "on_stage_start", state)
                for epoch in range(state.epoch + 1, stage.num_epochs + 1):
                    state.epoch = epoch
                    self._run_epoch(state, loaders, cbs, valid_loader, channels_last)
                    if state.stop_training:
                        break
                self._fire(cbs, "on_stage_end", state)
            except BaseException as exc:
                state.exception = exc
                self._fire(cbs, "on_exception", state)
                raise
        return state

    def _run_epoch(self, state: RunnerState, loaders: Mapping[str, Iterable], cbs: list[Callback],
                   valid_loader: str, channels_last: bool) -> None:
        state.global_epoch += 1
        state.epoch_metrics = {}
        state.samples = None
        self._fire(cbs, "on_epoch_start", state)
        for state.loader_name, loader in loaders.items():
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.global_epoch)
            state.need_backward = state.loader_name.startswith("train")
            self._run_loader(state, loader, cbs, state.model, channels_last)
        state.valid_metrics = state.epoch_metrics[valid_loader]
        if state.main_metric not in state.valid_metrics:
            raise KeyError(f"main_metric {state.main_metric!r} is not among the valid metrics "
                           f"{sorted(state.valid_metrics)}; add its callback or choose another")
        value = state.valid_metrics[state.main_metric]
        state.is_best_valid = state.is_better(value, state.best_valid_metric)
        if state.is_best_valid:
            state.best_valid_metric = value
        self._fire(cbs, "on_epoch_end", state)

    # ---- resume -------------------------------------------------------------------------------------

    def _load_resume(self, resume: str | os.PathLike, state: RunnerState, stages: list[Stage],
                     optimizer: Any, scheduler: Any) -> dict[str, Any]:
        path = Path(resume)
        full = path.with_name(path.stem + "_full.pth") if not path.stem.endswith("_full") else path
        if full.is_file():
            path = full
        ck = load_checkpoint(path, map_location=state.device)
        if ck.get("stage") not in [s.name for s in stages]:
            raise ValueError(f"checkpoint {path} is from stage {ck.get('stage')!r}, not one of "
                             f"{[s.name for s in stages]}")
        ck["stage_index"] = [s.name for s in stages].index(ck["stage"])
        target = state.model
        for attr in ("_orig_mod", "module"):
            target = getattr(target, attr, target)
        from segzoo.encoders.weights import load_into

        load_into(target, clean_state_dict(ck["model_state_dict"]), f"the model (resuming from {path})")
        if "optimizer_state_dict" not in ck:
            warnings.warn(f"{path} has no optimizer state (not a _full checkpoint): resuming with fresh "
                          f"optimizer/scheduler state", stacklevel=3)
        return ck

    def _restore_after_resume(self, ck: dict[str, Any], state: RunnerState, cbs: list[Callback]) -> None:
        for key, obj in (("optimizer_state_dict", state.optimizer), ("scheduler_state_dict", state.scheduler),
                         ("criterion_state_dict", state.criterion), ("scaler_state_dict", state.scaler)):
            saved = ck.get(key)
            if saved is None or obj is None:
                continue
            if isinstance(obj, dict):
                for name, sub in obj.items():
                    sub.load_state_dict(saved[name])
            elif hasattr(obj, "load_state_dict"):
                obj.load_state_dict(saved)
        counts: dict[str, int] = {}
        saved_cbs = ck.get("callbacks_state", {})
        for cb in cbs:
            name = type(cb).__name__
            counts[name] = counts.get(name, 0) + 1
            key = callback_key(counts[name], cb)
            if key in saved_cbs:
                cb.load_state_dict(saved_cbs[key])
        state.global_epoch = int(ck.get("global_epoch", 0))
        state.best_valid_metric = ck.get("best_valid_metric")
        if ck.get("rng_state") is not None:
            set_rng_state(ck["rng_state"])

    # ---- inference ----------------------------------------------------------------------------------

    def infer(self, model: nn.Module | None, loaders: Mapping[str, Iterable], callbacks: list[Callback] | None = None,
              verbose: bool = False, resume: str | os.PathLike | None = None, amp: bool | str = False,
              channels_last: bool = False) -> RunnerState:
        """Run ``model`` over ``loaders`` without gradients; callbacks see every batch's outputs.

        Returns:
            The final state (``state.epoch_metrics`` holds any metrics the callbacks computed).
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one to infer() or to SupervisedRunner(model=...)")
        state = RunnerState(stage="infer", num_epochs=1, epoch=1)
        state.device = resolve_device(self.device)
        if amp:
            state.amp_dtype = AMP_DTYPES.get(amp if isinstance(amp, str) else
                                             ("fp16" if state.device.type == "cuda" else "bf16"))
        if resume is not None:
            model.load_state_dict(clean_state_dict(load_checkpoint(resume)["model_state_dict"]))
        state.model = model.to(state.device)
        cbs = sort_callbacks(list(callbacks or []) + ([ProgressBarLogger()] if verbose else []))
        self._fire(cbs, "on_stage_start", state)
        for state.loader_name, loader in loaders.items():
            state.need_backward = False
            self._run_loader(state, loader, cbs, state.model, channels_last)
        self._fire(cbs, "on_stage_end", state)
        return state

    def predict_loader(self, model: nn.Module | None, loader: Iterable, resume: str | os.PathLike | None = None,
                       verbose: bool = False, **kwargs: Any) -> np.ndarray:
        """Outputs of ``model`` over ``loader`` concatenated on the batch axis.

        Returns:
            float32 numpy array (N, K, H, W).
        """
        collector = _OutputCollector(self.output_key)
        self.infer(model, {"infer": loader}, callbacks=[collector], verbose=verbose, resume=resume, **kwargs)
        if not collector.outputs:
            return np.zeros((0,), dtype=np.float32)
        return torch.cat(collector.outputs).numpy()


class _OutputCollector(Callback):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.outputs: list[torch.Tensor] = []

    def on_batch_end(self, state: RunnerState) -> None:
        self.outputs.append(state.output[self.key].detach().float().cpu())
