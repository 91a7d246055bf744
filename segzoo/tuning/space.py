"""The search space of ``segzoo tune``: a YAML file of config keys and the values each may take.

Format (every key is a dotted config key, as in ``segzoo train`` overrides)::

    optimizer.params.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    data.batch_size: {type: int, low: 4, high: 16, step: 4}
    model.name: {type: categorical, choices: [resnet18_unet, resnet34_unet]}
    pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 1}   # optional (see PRUNERS)
    sampler: {name: tpe, seed: 0}                                    # optional: tpe | random

``float`` and ``int`` take ``low``, ``high`` (both included), ``log`` (sample on a log scale,
``low > 0``) or ``step``; ``categorical`` takes ``choices`` (numbers, strings, booleans, null).
:func:`read_space` checks the file alone, :func:`check_space_keys` each key against the config (an
unknown key, or a parameter the named class does not take), so a mistake is one line naming the key
before any trial starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from typing import Any

from segzoo.errors import ConfigError, close_matches, short_repr

TYPES = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}
#: pruner names of a space file's ``pruner:`` and ``segzoo tune --pruner`` -> optuna.pruners class
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner", "none": "NopPruner"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
RESERVED = ("pruner", "sampler")  # study settings, not config keys
_KEY = re.compile(r"[^\s.=~]+(?:\.[^\s.=~]+)*")  # dotted, without what an override line gives a meaning


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config key.

    Attributes:
        key: the dotted config key (``optimizer.params.lr``).
        type: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: the range (numbers; both included).
        log: sample on a log scale.
        step: the spacing of values (``None``: continuous float / step 1 int).
        choices: the values of a categorical key.
    """

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` (an ``optuna.Trial``) picks for this key."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """Values that cover what the key may take, for checking it against the config."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A parsed space file: the searched keys, and the study settings it names.

    Attributes:
        params: the searched keys in file order.
        pruner: ``{"name": ..., **arguments}`` or ``None`` (the default pruner).
        sampler: ``{"name": ..., **arguments}`` or ``None`` (TPE).
        path: the file it was read from (for messages).
    """

    params: tuple[Param, ...]
    pruner: dict[str, Any] | None = None
    sampler: dict[str, Any] | None = None
    path: str = "space file"


def _fail(path: str | os.PathLike, key: str, message: str) -> ConfigError:
    return ConfigError(f"space file {path}: {key}: {message}")


def _number(path: Any, key: str, spec: dict[str, Any], name: str, integer: bool) -> float:
    value = spec.get(name)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise _fail(path, key, f"{name} must be {'an integer' if integer else 'a finite number'}, "
                               f"got {short_repr(value)}")
    return value


def _param(path: Any, key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise _fail(path, short_repr(key), "a key must be a dotted config key such as optimizer.params.lr")
    if not isinstance(spec, dict):
        raise _fail(path, key, f"must be a mapping such as {{type: float, low: 0.001, high: 0.1}}, got "
                               f"{short_repr(spec)}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise _fail(path, key, f"unknown type {short_repr(kind)} (valid: {', '.join(TYPES)})")
    unknown = [k for k in spec if k != "type" and k not in TYPES[kind]]
    if unknown:
        hint = close_matches(str(unknown[0]), TYPES[kind])
        raise _fail(path, key, f"type {kind} takes no {short_repr(unknown[0])}"
                               + (f"; did you mean {hint[0]!r}?" if hint else "")
                               + f" (valid: type, {', '.join(TYPES[kind])})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(path, key, f"choices must be a non-empty list, got {short_repr(choices)}")
        bad = [c for c in choices if c is not None and not isinstance(c, bool | int | float | str)]
        if bad:
            raise _fail(path, key, f"choice {short_repr(bad[0])} is not a number, string, boolean or null")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    low, high = (_number(path, key, spec, n, integer) for n in ("low", "high"))
    if low > high:
        raise _fail(path, key, f"empty range: low={short_repr(low)} > high={short_repr(high)}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise _fail(path, key, f"log must be true or false, got {short_repr(log)}")
    if log and low <= 0:
        raise _fail(path, key, f"log: true needs low > 0, got low={short_repr(low)}")
    if step is not None:
        step = _number(path, key, spec, "step", integer)
        if step <= 0:
            raise _fail(path, key, f"step must be > 0, got {short_repr(step)}")
        if log:
            raise _fail(path, key, "give log or step, not both")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _settings(path: Any, key: str, spec: Any, names: dict[str, str]) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or spec.get("name") not in names:
        shown = spec.get("name") if isinstance(spec, dict) else spec
        raise _fail(path, key, f"unknown {key} {short_repr(shown)} (valid: {', '.join(names)})")
    return dict(spec)


def read_space(path: str | os.PathLike) -> SearchSpace:
    """Read and check a space file (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: one line naming the file and the key: an unknown type or field, an empty range,
            no keys at all, an unknown pruner or sampler.
    """
    from segzoo.training.yaml_io import read_yaml_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"space file not found: {path}")
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"space file {path} must be a mapping of config keys to ranges, got "
                          f"{short_repr(data) if data is not None else 'an empty file'}")
    params = tuple(_param(path, k, v) for k, v in data.items() if k not in RESERVED)
    if not params:
        raise ConfigError(f"space file {path} names no config key to search (e.g. optimizer.params.lr: "
                          f"{{type: float, low: 1.0e-4, high: 1.0e-2, log: true}})")
    return SearchSpace(params, pruner=_settings(path, "pruner", data.get("pruner"), PRUNERS),
                       sampler=_settings(path, "sampler", data.get("sampler"), SAMPLERS), path=str(path))


def override(key: str, value: Any) -> str:
    """``key=value`` as a ``segzoo train`` override (the value in JSON, which YAML reads back as it was)."""
    return f"{key}={json.dumps(value)}"


def _section_class(cfg: dict[str, Any], parts: list[str], regs: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    """The kind and the class (or model factory) of the named section ``parts`` points to, or ``("", None)``."""
    from segzoo.models.registry import MODELS

    if len(parts) == 1 and parts[0] in ("model", "loss", "optimizer", "scheduler"):
        kind = parts[0]
    elif len(parts) == 2 and parts[0] == "callbacks":
        kind = "callback"
    elif len(parts) == 3 and parts[0] == "stages" and parts[2] in ("optimizer", "scheduler"):
        kind = parts[2]
    else:
        return "", None
    node: Any = cfg
    try:
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node.get(part)
    except (IndexError, ValueError, AttributeError):
        return "", None
    name = node.get("name") if isinstance(node, dict) else None
    if name is None and kind == "optimizer":  # a stage's optimizer without a name: the run's
        name = (cfg.get("optimizer") or {}).get("name", "Adam")
    if kind == "model":
        return kind, MODELS[name] if name in MODELS else None
    return kind, regs.get(kind, {}).get(name)


def _check_param_name(cfg: dict[str, Any], key: str, regs: dict[str, dict[str, Any]]) -> None:
    parts = key.split(".")
    if len(parts) < 3 or parts[-2] != "params":
        return
    kind, cls = _section_class(cfg, parts[:-2], regs)
    if cls is None:
        return
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    accepted = [n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if parts[-1] not in accepted and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        hint = close_matches(parts[-1], accepted)
        raise ConfigError(f"unknown key {key}: {kind} {getattr(cls, '__name__', '')} takes no {parts[-1]!r}"
                          + (f"; did you mean {hint[0]!r}?" if hint else "")
                          + f" (valid: {', '.join(accepted)})")


def check_space_keys(space: SearchSpace, config: str | os.PathLike, overrides: list[str] = ()) -> None:
    """Check every key of ``space`` against the config, with each of its extreme values and choices.

    Each value is applied like a command-line override to the config (with ``overrides``), which is
    then validated, its names looked up and its parameters checked against the classes they go to.

    Raises:
        ConfigError: one line ``space file PATH: KEY=VALUE: ...`` for the first key the config refuses.
    """
    from segzoo.training.build import check_callback_params, check_names, registries
    from segzoo.training.config import load_config

    regs = registries()
    for param in space.params:
        for value in param.extremes():
            try:
                cfg = load_config(config, [*overrides, override(param.key, value)])
                check_names(cfg)
                check_callback_params(cfg, regs)
                _check_param_name(cfg, param.key, regs)
            except (ConfigError, KeyError) as exc:
                message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                raise ConfigError(f"space file {space.path}: {param.key}={short_repr(value)}: {message.splitlines()[0]}") from None
