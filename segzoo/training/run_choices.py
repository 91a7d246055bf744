"""What a training run picks for speed before its first step: threads, precision and ``compile="auto"``.

- **Threads** (:func:`apply_threads`): torch's intra-op threads from the CPUs really free
  (:func:`segzoo.hardware.threads.choose_threads`), unless the user chose them (``OMP_NUM_THREADS``,
  ``torch.set_num_threads``); the runner restores the previous count when ``train`` returns.
- **Precision** (:func:`resolve_precision`): ``precision="auto"`` is bf16 autocast where the device
  computes bf16 natively and fp32 elsewhere (:func:`segzoo.hardware.precision.preferred_precision`);
  ``amp=`` (and Catalyst's ``fp16=``) keep their meaning and name the precision themselves.
- **Compile** (:func:`choose_compile`): ``compile="auto"`` compiles only when the compile time is
  repaid by the per-step saving over the run's planned steps; a compile failure is one warning line
  and the run goes on eagerly.

Each choice is recorded in ``state.checkpoint_data`` (``"precision"``, ``"compile"``, ``"threads"``,
next to the runner's ``"layout"``) and said in the run's first lines (:func:`startup_line`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from segzoo.errors import short_repr
from segzoo.hardware.precision import PRECISIONS, PrecisionChoice, preferred_precision
from segzoo.hardware.threads import ThreadChoice, choose_threads, user_set_threads
from segzoo.training.state import RunnerState

__all__ = ["AMP_DTYPES", "apply_threads", "auto_compile", "choose_compile", "compile_now", "compile_pays", "first_train_batch",
           "log_startup", "measure_compile", "planned_steps", "resolve_precision", "restored_threads", "startup_line"]

AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_SETTINGS = (True, False, "auto")
#: The most a compiled train step is assumed to save of an eager one before anything is compiled.
MAX_COMPILE_SAVING = 0.5
#: The compile time assumed before one is measured (seconds; inductor on a ResNet-34 U-Net takes longer).
ASSUMED_COMPILE_SECONDS = 20.0


def resolve_precision(precision: str, amp: bool | str | None, device: torch.device,
                      measure: bool = True) -> PrecisionChoice:
    """The run's precision from the ``precision`` and ``amp`` settings.

    ``amp`` (``None``: not given) wins when given: ``False`` is fp32, ``True`` fp16 on CUDA and bf16
    elsewhere, ``"fp16"`` / ``"bf16"`` as named. Otherwise ``precision``: ``"fp32"``, ``"bf16"``,
    ``"fp16"`` as named, ``"auto"`` (:func:`~segzoo.hardware.precision.preferred_precision`; ``measure=False``:
    a cached measurement or the rule, as the processes of a distributed run must agree).

    Raises:
        ValueError: an unknown value, or ``amp`` and ``precision`` naming different precisions.
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {short_repr(precision)}")
    if amp is not None:
        if amp is False:
            named = "fp32"
        elif amp is True:
            named = "fp16" if device.type == "cuda" else "bf16"
        elif isinstance(amp, str) and amp in ("fp16", "bf16"):
            named = amp
        else:
            raise ValueError(f"amp must be False, True, 'fp16' or 'bf16', got {short_repr(amp)}")
        if precision not in ("auto", named):
            raise ValueError(f"amp={amp!r} means {named}, but precision={precision!r}: give one of them "
                             f"(precision is the newer spelling)")
        return PrecisionChoice(named, f"amp={amp!r}")
    if precision != "auto":
        return PrecisionChoice(precision, f"precision={precision!r}")
    return preferred_precision(device, measure=measure)


def apply_threads() -> tuple[ThreadChoice, int]:
    """Set torch's intra-op threads to the CPUs free now, unless the user chose them.

    Returns:
        ``(the choice, the thread count before)``, to restore when the run ends.
    """
    before = torch.get_num_threads()
    chosen_by_user = user_set_threads()
    if chosen_by_user is not None:
        return ThreadChoice(before, f"set by the user ({chosen_by_user})"), before
    choice = choose_threads()
    if choice.threads != before:
        torch.set_num_threads(choice.threads)
    return choice, before


def planned_steps(stages: Iterable[Any], loaders: Mapping[str, Any], max_batches: int | None) -> int:
    """Train steps the run plans: epochs of each stage times the batches of the ``train*`` loaders."""
    per_epoch = 0
    for name, loader in loaders.items():
        if str(name).startswith("train"):
            size = len(loader) if hasattr(loader, "__len__") else 0
            per_epoch += min(size, max_batches) if max_batches is not None else size
    return sum(s.num_epochs for s in stages) * per_epoch


def compile_now(setting: Any) -> bool | dict:
    """What :func:`~segzoo.training.loop.prepare_model` compiles with: ``setting``, ``False`` for ``"auto"``
    (decided later by :func:`auto_compile`).

    Raises:
        ValueError: ``setting`` is not ``True``, ``False``, ``"auto"`` or a dict of options.
    """
    if setting == "auto":
        return False
    if isinstance(setting, bool | dict):
        return setting
    raise ValueError(f"compile must be True, False, 'auto' or a dict of torch.compile options, "
                     f"got {short_repr(setting)}")


def compile_pays(steps: int, eager_s: float, compiled_s: float, compile_s: float) -> bool:
    """Whether compiling (``compile_s`` seconds once) is repaid by ``eager_s - compiled_s`` saved per step."""
    return (eager_s - compiled_s) * steps > compile_s


def _step_seconds(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any], autocast: Any) -> float:
    """Seconds of one forward + backward of ``model`` on ``batch`` (gradients dropped afterwards)."""
    start = time.perf_counter()
    with autocast:
        out = forward(model, batch)
    tensors = [v for v in (out.values() if isinstance(out, Mapping) else [out]) if isinstance(v, torch.Tensor)]
    tensors = [t.float().mean() for t in tensors if t.is_floating_point() and t.requires_grad]
    if tensors:
        torch.stack(tensors).sum().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def measure_compile(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any],
                    autocast: Any, eager_only: bool = False) -> dict[str, Any]:
    """Time ``model``'s train step eagerly and, unless ``eager_only``, compiled (the first call is the compile).

    The model's buffers (BatchNorm statistics) and gradients are as before afterwards; no optimizer step runs.

    Returns:
        ``{"eager_s"}`` and, compiled, ``{"compiled_model", "compile_s", "compiled_s"}``.

    Raises:
        Exception: whatever ``torch.compile`` raises (the caller falls back to eager).
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        _step_seconds(model, batch, forward, autocast)  # warm-up
        out: dict[str, Any] = {"eager_s": _step_seconds(model, batch, forward, autocast)}
        if not eager_only:
            compiled = torch.compile(model)
            first = _step_seconds(compiled, batch, forward, autocast)
            out["compiled_s"] = _step_seconds(compiled, batch, forward, autocast)
            out.update(compiled_model=compiled, compile_s=max(0.0, first - out["compiled_s"]))
        return out
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# the measurement compile="auto" uses (tests replace it: the test suite compiles nothing on CPU)
_MEASURE: list[Callable[..., dict[str, Any]]] = [measure_compile]


def choose_compile(model: nn.Module, setting: bool | str | dict, steps: int, batch: Any,
                   forward: Callable[[nn.Module, Any], Any], autocast: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The model the run trains (compiled or not) and the record of why.

    ``True`` / a dict of options: compiled (as before). ``False``: eager. ``"auto"``: the eager step is
    timed on ``batch``; when even a step :data:`MAX_COMPILE_SAVING` faster could not repay
    :data:`ASSUMED_COMPILE_SECONDS` over ``steps``, the run stays eager without compiling; otherwise the
    model is compiled and timed, and kept compiled when its measured saving repays the compile time
    (else eager). A compile error is one warning line, and the run goes on eagerly.

    Raises:
        ValueError: another ``setting``.
    """
    if isinstance(setting, dict) or setting is True:
        return torch.compile(model, **(setting if isinstance(setting, dict) else {})), {"compiled": True,
                                                                                         "source": "compile=True"}
    if setting is False or setting is None:
        return model, {"compiled": False, "source": "compile=False"}
    if setting != "auto":
        raise ValueError(f"compile must be True, False, 'auto' or a dict of torch.compile options, "
                         f"got {short_repr(setting)}")
    if steps <= 0 or batch is None:
        return model, {"compiled": False, "source": "auto: no train steps to time"}
    eager = _MEASURE[0](model, batch, forward, autocast, eager_only=True)["eager_s"]
    if not compile_pays(steps, eager, eager * (1 - MAX_COMPILE_SAVING), ASSUMED_COMPILE_SECONDS):
        return model, {"compiled": False, "eager_step_s": round(eager, 4), "steps": steps,
                       "source": f"auto: {steps} steps of {eager:.3g} s cannot repay a compile"}
    try:
        measured = _MEASURE[0](model, batch, forward, autocast)
    except Exception as exc:  # noqa: BLE001 - any compiler error: the run goes on eagerly
        first = (str(exc).strip().splitlines() or [""])[0]
        warnings.warn(f"compile='auto': torch.compile failed ({type(exc).__name__}: {short_repr(first, 160)}); "
                      f"training eagerly", RuntimeWarning, stacklevel=3)
        return model, {"compiled": False, "source": f"auto: compile failed ({type(exc).__name__})"}
    record = {"eager_step_s": round(measured["eager_s"], 4), "compiled_step_s": round(measured["compiled_s"], 4),
              "compile_s": round(measured["compile_s"], 2), "steps": steps}
    # the compile time is spent now: what remains is whether each of the other steps is faster compiled
    keep = measured["compiled_s"] < measured["eager_s"]
    repaid = compile_pays(steps, measured["eager_s"], measured["compiled_s"], measured["compile_s"])
    record.update(compiled=keep, source=f"auto: measured, {'repaid' if repaid else 'not repaid'} over {steps} steps")
    return (measured["compiled_model"] if keep else model), record


def first_train_batch(loaders: Mapping[str, Any]) -> Any:
    """The first batch of the first ``train*`` loader, drawn without moving any random number generator."""
    import random

    import numpy as np

    loader = next((v for k, v in loaders.items() if str(k).startswith("train")), None)
    if loader is None:
        return None
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        return next(iter(loader), None)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def auto_compile(state: RunnerState, loaders: Mapping[str, Any], stages: list[Any],
                 batch_to_dict: Callable[[Any], Any], forward: Callable[[RunnerState, nn.Module], Any]) -> None:
    """``compile="auto"`` for the runner: ``state.model`` compiled when that is repaid over the planned steps
    (:func:`choose_compile`, timed on the first train batch), recorded in ``state.checkpoint_data["compile"]``."""
    from segzoo.training.data_path import batch_normalizer
    from segzoo.training.loop import device_input

    if state.distributed:  # each process would measure and might decide otherwise: DDP needs one graph
        state.checkpoint_data["compile"] = {"compiled": False, "source": "auto: distributed runs stay eager"}
        return
    batch = first_train_batch(loaders)
    if batch is not None:
        train = next(v for k, v in loaders.items() if str(k).startswith("train"))  # the batch's loader
        state.input = device_input(batch_to_dict(batch), state, batch_normalizer(train, state.device))
    autocast = (torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)
                if state.amp_dtype is not None else contextlib.nullcontext())
    try:
        state.model, state.checkpoint_data["compile"] = choose_compile(
            state.model, "auto", planned_steps(stages, loaders, state.max_batches), batch,
            lambda model, _: forward(state, model), autocast)
    finally:
        state.input = None


@contextlib.contextmanager
def restored_threads(before: int) -> Iterator[None]:
    """Give torch back ``before`` intra-op threads when the block ends (the run changed them for itself)."""
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def log_startup(state: RunnerState) -> None:
    """Print :func:`startup_line` and append it to ``logdir/log.txt`` (the run's first log line)."""
    from pathlib import Path

    from segzoo.fileio import write_error

    text = startup_line(state)
    print(text, flush=True)
    if state.logdir is not None and Path(state.logdir).is_dir():
        path = Path(state.logdir) / "log.txt"
        try:
            with open(path, "a") as f:
                f.write(text + "\n")
        except OSError as exc:
            raise write_error(path, exc) from None


def startup_line(state: RunnerState) -> str:
    """The run's first log line: threads, precision, layout and compile, each with its reason."""
    data = state.checkpoint_data
    threads, precision = data.get("threads") or {}, data.get("precision") or {}
    layout, compiled = data.get("layout") or {}, data.get("compile") or {}
    shown = {True: "channels_last", False: "NCHW"}
    return (f"segzoo: threads {threads.get('threads', torch.get_num_threads())} ({threads.get('source', '?')}); "
            f"precision {precision.get('precision', '?')} ({precision.get('source', '?')}); "
            f"layout train={shown.get(layout.get('train'), '?')} forward={shown.get(layout.get('forward'), '?')} "
            f"({layout.get('source', '?')}); compile {'on' if compiled.get('compiled') else 'off'} "
            f"({compiled.get('source', '?')})" + _kernel_text(data.get("optimizer_kernel")))


def _kernel_text(kernel: Any) -> str:
    if isinstance(kernel, dict):
        return f"; optimizer step {kernel.get('kernel', '?')}"
    if isinstance(kernel, list) and kernel:
        return "; optimizer steps " + ", ".join(str(k.get("kernel", "?")) for k in kernel if isinstance(k, dict))
    return ""
