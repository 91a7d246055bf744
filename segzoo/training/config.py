"""``segzoo train --config CONFIG.yml [key=value ...]``: training from a YAML config.

Schema (every key optional unless marked; unknown keys are rejected with the closest valid one)::

    seed: 42
    logdir: logs/run                     # required
    model:                               # required
      name: resnet18_unet                # a registry name (segzoo models)
      params: {num_classes: 1, pretrained: false}   # num_classes: stated here, once
    data:                                # required
      kind: procedural                   # procedural | folder
      params: {image_size: 96}           # ProceduralSegmentation / SegmentationFolder args; num_classes
                                         # defaults to model.params.num_classes (if given, it must be equal)
      train_size: 512                    # procedural: samples (valid uses seed + 1)
      valid_size: 128
      train_images: data/train/images    # folder: the four folders
      train_masks: data/train/masks
      valid_images: data/valid/images
      valid_masks: data/valid/masks
      image_size: 256                    # folder: augmentation presets' size
      batch_size: 16
      num_workers: auto                  # auto (min(2, usable CPUs - 1)) | an int >= 0
      prefetch_factor: 2                 # batches each worker prepares ahead
    loss: {name: BCEDiceLoss, params: {}}                 # segzoo.losses.LOSSES
    aux_loss: {name: BCEWithLogitsLoss, params: {}, weight: 0.4, target_key: label}  # a model with
                                         # aux_params: loss of its labels (batch key target_key), added
                                         # with weight; logs loss/aux and label_accuracy
    optimizer: {name: Adam, params: {lr: 0.001}}          # any torch.optim class
    scheduler: {name: CosineAnnealingLR, params: {T_max: 10}}   # any torch.optim.lr_scheduler class
    callbacks:                           # segzoo.training.CALLBACKS names
      - {name: DiceCallback, params: {threshold: 0.5}}
    num_epochs: 10                       # single stage, or:
    stages:
      - {name: warmup, num_epochs: 1, optimizer: {params: {lr: 0.0003}}}
      - {name: train, num_epochs: 8}
    runner: {main_metric: dice, minimize_metric: false, verbose: true, precision: auto,
             channels_last: auto, compile: false, device: auto, resume: null}
                                         # precision: auto (bf16 where native, else fp32) | fp32 | bf16 | fp16
                                         # (amp: true | false | fp16 | bf16, the older spelling, still read);
                                         # channels_last: auto | true | false, as the models' own setting,
                                         # which it sets (unset: the model's choice); compile: auto | true | false

Command-line overrides ``key.sub=value`` are parsed as YAML (``stages.1.num_epochs=2``,
``logdir=/tmp/x``, ``scheduler={name: StepLR, params: {step_size: 5}}``); ``~key.sub`` removes a
key (``~model.params.pretrained``). YAML is read with a ``yaml.SafeLoader`` that also takes
``1e-3`` as a float and refuses aliases expanding past 100000 values. The effective config is
saved once, when a fresh run starts, as ``logdir/config.yml``; ``segzoo train --force`` replaces a
previous run and ``runner.resume`` continues one (see :mod:`segzoo.training.logdir` and
:func:`check_resume_config`). Checks that need no data run first (:mod:`segzoo.training.preflight`).

This module reads, overrides and validates a config; :mod:`segzoo.training.yaml_io` parses YAML,
:mod:`segzoo.training.build` builds what a config names and :mod:`segzoo.training.launch` runs
:func:`train_from_config` (all importable from here as before); ``segzoo train`` is :mod:`segzoo.cli.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from segzoo.errors import ConfigError, check_file_name, close_matches, short_repr
from segzoo.training.build import FOLDER_KEYS, build_loaders, check_names, registries
from segzoo.training.launch import RESUME_MAY_CHANGE, check_resume_config, train_from_config
from segzoo.training.yaml_io import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES, parse_yaml, read_yaml_file

__all__ = ["load_config", "validate", "train_from_config", "build_loaders", "check_names", "registries",
           "check_resume_config", "read_yaml_file", "SCHEMA", "RESUME_MAY_CHANGE", "MAX_NODES", "MAX_DEPTH",
           "MAX_CONFIG_BYTES"]

SCHEMA: dict[str, Any] = {
    "seed": int, "logdir": str, "num_epochs": int,
    "model": {"name": str, "params": dict},
    "data": {"kind": str, "params": dict, "train_size": int, "valid_size": int, "train_images": str,
             "train_masks": str, "valid_images": str, "valid_masks": str, "image_size": (int, list),
             "batch_size": int, "num_workers": (int, str), "prefetch_factor": int},
    "loss": {"name": str, "params": dict},
    "aux_loss": {"name": str, "params": dict, "weight": (int, float), "target_key": str},
    "optimizer": {"name": str, "params": dict},
    "scheduler": {"name": str, "params": dict},
    "callbacks": list,
    "stages": list,
    "runner": {"main_metric": str, "minimize_metric": bool, "verbose": bool, "amp": (bool, str),
               "precision": str, "channels_last": (bool, str), "compile": (bool, str), "device": str, "resume": (str, type(None)),
               "nonfinite": str},
}
STAGE_SCHEMA = {"name": str, "num_epochs": int, "optimizer": {"name": str, "params": dict},
                "scheduler": {"name": str, "params": dict}}
REQUIRED = ("logdir", "model", "data")
# integer settings and their smallest / largest valid value (one value must not exhaust the machine:
# a DataLoader shuffles with a permutation of train_size int64, workers are processes)
MINIMUM = {"num_epochs": 1, "data.train_size": 1, "data.valid_size": 1, "data.batch_size": 1,
           "data.num_workers": 0, "data.prefetch_factor": 1}
MAXIMUM = {"num_epochs": 100_000, "data.train_size": 10_000_000, "data.valid_size": 10_000_000,
           "data.batch_size": 4096, "data.num_workers": 64, "data.prefetch_factor": 64, "seed": 2**63 - 1}
MAX_IMAGE_SIDE = 8192
MAX_BATCH_BYTES = 2 << 30   # float32 input of one batch


def _check(node: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            raise ConfigError(f"{where or 'config'} must be a mapping, got {type(node).__name__} {short_repr(node)}")
        for key, value in node.items():
            if key not in schema:
                hint = close_matches(str(key)[:100], schema)
                raise ConfigError(f"unknown config key {where + '.' if where else ''}{short_repr(key).strip(chr(39))}"
                                  + (f"; did you mean {hint[0]!r}?" if hint else "")
                                  + f" (valid: {', '.join(schema)})")
            _check(value, schema[key], f"{where}.{key}" if where else str(key))
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(node, bool) and bool not in types:
        raise ConfigError(f"{where} must be {' or '.join(t.__name__ for t in types)}, got a bool")
    if not isinstance(node, types):
        raise ConfigError(f"{where} must be {' or '.join(t.__name__ for t in types)}, "
                          f"got {type(node).__name__} {short_repr(node)}")


def validate(cfg: dict[str, Any]) -> None:
    """Check the whole config before anything heavy runs.

    ``data.params.num_classes`` is set to ``model.params.num_classes`` when the config leaves it out.

    Raises:
        ConfigError: unknown key (closest valid named), wrong type, missing required section,
            ``data.params.num_classes`` other than ``model.params.num_classes``.
    """
    _check(cfg, SCHEMA, "")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ConfigError(f"config is missing required key(s) {missing}")
    if not cfg["logdir"].strip():
        raise ConfigError("logdir is empty; name a folder for the run (e.g. logdir=logs/run): an empty logdir "
                          "would write into the current folder")
    for dotted in {**MINIMUM, **MAXIMUM}:
        section, _, key = dotted.rpartition(".")
        value = (cfg.get(section) or {}).get(key) if section else cfg.get(key)
        _bound(dotted, value, MINIMUM.get(dotted, -MAXIMUM.get(dotted, 0)), MAXIMUM.get(dotted))
    names = []
    for i, stage in enumerate(cfg.get("stages") or []):
        _check(stage, STAGE_SCHEMA, f"stages.{i}")
        if "num_epochs" not in stage:
            raise ConfigError(f"stages.{i} needs num_epochs")
        _bound(f"stages.{i}.num_epochs", stage["num_epochs"], 1, MAXIMUM["num_epochs"])
        try:
            names.append(check_file_name(stage.get("name", f"stage{i + 1}"), f"stages.{i}.name"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"stages: two stages are named {dup!r}; stage names must be unique (they name checkpoints)")
    _check_sizes(cfg["data"])
    workers = cfg["data"].get("num_workers")
    if isinstance(workers, str) and workers != "auto":
        raise ConfigError(f"data.num_workers must be 'auto' or an int >= 0 (DataLoader worker processes), "
                          f"got {short_repr(workers)}")
    normalize = (cfg["data"].get("params") or {}).get("normalize", "auto")
    if normalize not in ("auto", "batch", "item"):
        raise ConfigError(f"data.params.normalize must be auto, batch (uint8 batches normalized on the device) or "
                          f"item (float images normalized in the workers), got {short_repr(normalize)}")
    for i, cb in enumerate(cfg.get("callbacks") or []):
        _check(cb, {"name": str, "params": dict}, f"callbacks.{i}")
    if "name" not in cfg["model"]:
        raise ConfigError("model.name is required (see `segzoo models`)")
    kind = cfg["data"].get("kind", "procedural")
    if kind not in ("procedural", "folder"):
        raise ConfigError(f"data.kind must be 'procedural' or 'folder', got {short_repr(kind)}")
    if kind == "folder":
        absent = [k for k in FOLDER_KEYS if k not in cfg["data"]]
        if absent:
            raise ConfigError(f"data.kind=folder needs {absent}")
    other = ("train_size", "valid_size") if kind == "folder" else (*FOLDER_KEYS, "image_size")
    unused = [k for k in other if k in cfg["data"]]
    if unused:
        raise ConfigError(f"data.kind={kind} does not use data.{unused[0]}"
                          + (" (the procedural image size is data.params.image_size)" if unused[0] == "image_size"
                             else ""))
    if cfg.get("stages") and "num_epochs" in cfg:
        raise ConfigError("give either num_epochs (one stage) or stages (each with its num_epochs), not both")
    runner = cfg.get("runner") or {}
    for key, allowed in (("channels_last", ("auto",)), ("compile", ("auto",)), ("amp", ("fp16", "bf16")),
                         ("precision", ("auto", "fp32", "bf16", "fp16"))):
        value = runner.get(key)
        if isinstance(value, str) and value not in allowed:
            shown = ("true, false or " if key != "precision" else "") + ", ".join(allowed)
            raise ConfigError(f"runner.{key} must be {shown}, got {short_repr(value)}")
    _check_precision(runner)
    _check_num_classes(cfg)


def _check_precision(runner: dict[str, Any]) -> None:
    """``runner.amp`` and ``runner.precision`` agree, and ``SEGZOO_PRECISION`` is valid: before any folder is made.

    Raises:
        ConfigError: naming both keys (or the variable) and their values.
    """
    from segzoo.hardware.precision import forced_precision

    amp, precision = runner.get("amp"), runner.get("precision", "auto")
    named = {False: ("fp32",), True: ("fp16", "bf16"), "fp16": ("fp16",), "bf16": ("bf16",)}.get(amp)
    if amp is not None and precision != "auto" and named is not None and precision not in named:
        raise ConfigError(f"runner.amp={short_repr(amp)} means {' or '.join(named)}, but runner.precision="
                          f"{short_repr(precision)}; give one of them (precision is the newer spelling)")
    try:
        forced_precision()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_num_classes(cfg: dict[str, Any]) -> None:
    """``model.params.num_classes`` is the number of classes; ``data.params.num_classes`` may repeat it (equal)
    and is filled in from it when absent, so that the data and the model agree.

    Raises:
        ConfigError: the two are given and differ, or only the data's is given (other than 1).
    """
    model_classes = (cfg["model"].get("params") or {}).get("num_classes")
    data_params = cfg["data"].get("params") or {}
    data_classes = data_params.get("num_classes")
    if model_classes is not None and data_classes is not None and model_classes != data_classes:
        raise ConfigError(f"model.params.num_classes={short_repr(model_classes)} but data.params.num_classes="
                          f"{short_repr(data_classes)}; they must match: state it once, in model.params.num_classes "
                          f"(1 = binary masks, K = K classes including background)")
    if model_classes is None and data_classes not in (None, 1):
        raise ConfigError(f"data.params.num_classes={short_repr(data_classes)} but model.params.num_classes is not "
                          f"set (the model would output its default); set model.params.num_classes instead")
    if data_classes is None and isinstance(model_classes, int) and not isinstance(model_classes, bool):
        cfg["data"]["params"] = {**data_params, "num_classes": model_classes}


def _bound(dotted: str, value: Any, low: int, high: int | None) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if value < low:
        raise ConfigError(f"{dotted} must be >= {low}, got {short_repr(value)}")
    if high is not None and value > high:
        raise ConfigError(f"{dotted} must be <= {high}, got {short_repr(value)}")


def _check_sizes(data: dict[str, Any]) -> None:
    """Bound image sizes and the input memory of one batch (named in the message)."""
    params = data.get("params") or {}
    for key, size in (("data.params.image_size", params.get("image_size")), ("data.image_size", data.get("image_size"))):
        if size is None:
            continue
        sides = size if isinstance(size, list) else [size]
        if len(sides) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
            raise ConfigError(f"{key} must be an int or [height, width], got {short_repr(size)}")
        for v in sides:
            _bound(key, v, 1, MAX_IMAGE_SIDE)
        h, w = (sides * 2)[:2]
        batch = data.get("batch_size", 8)
        if isinstance(batch, int) and batch * 3 * h * w * 4 > MAX_BATCH_BYTES:
            raise ConfigError(f"one batch of data.batch_size={batch} images 3x{h}x{w} float32 is "
                              f"{batch * 3 * h * w * 4 / 2**30:.1f} GiB (limit {MAX_BATCH_BYTES >> 30} GiB); "
                              f"lower data.batch_size or the image size")


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    shown = short_repr(dotted)
    if not all(parts):
        raise ConfigError(f"override {shown}: empty key name")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, list | dict):
            raise ConfigError(f"override {shown}: {short_repr('.'.join(parts[:i])).strip(chr(39))} is not a mapping "
                              f"(it is {type(node).__name__} {short_repr(node)})")
        try:
            key: Any = int(part) if isinstance(node, list) else part
            node = node[key] if isinstance(node, list) else node.setdefault(key, {})
        except (IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"override {shown}: {short_repr('.'.join(parts[:i + 1])).strip(chr(39))} "
                              f"does not exist") from exc
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"override {shown}: no list item {short_repr(last).strip(chr(39))}") from exc
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {shown}: {short_repr('.'.join(parts[:-1])).strip(chr(39))} is not a mapping "
                          f"(it is {type(node).__name__} {short_repr(node)})")


def _delete(cfg: dict[str, Any], dotted: str) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    try:
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[int(parts[-1]) if isinstance(node, list) else parts[-1]]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        shown = short_repr(dotted).strip("'")
        raise ConfigError(f"override ~{shown}: there is no {shown} to remove") from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate.

    Raises:
        FileNotFoundError: no such config file.
        ConfigError: invalid YAML, bad override, or an invalid config.
    """
    cfg = read_yaml_file(path)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"config {path} must be a mapping of keys (logdir, model, data, ...), got a YAML "
                          f"{short_repr(cfg) if isinstance(cfg, list) else type(cfg).__name__ + ' ' + short_repr(cfg)}")
    for item in overrides or []:
        if item.startswith("~") and "=" not in item:
            _delete(cfg, item[1:].strip())
            continue
        if "=" not in item:
            raise ConfigError(f"override {short_repr(item)} must look like key.sub=value (or ~key.sub to remove a key)")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"override {short_repr(key.strip())}")
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {short_repr(item)}: value is not valid YAML") from exc
        _set(cfg, key.strip(), value)
    validate(cfg)
    return cfg
