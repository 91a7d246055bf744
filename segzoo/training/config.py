"""``segzoo train --config CONFIG.yml [key=value ...]``: training from a YAML config.

Schema (every key optional unless marked; unknown keys are rejected with the closest valid one)::

    seed: 42
    logdir: logs/run                     # required
    model:                               # required
      name: resnet18_unet                # a registry name (segzoo models)
      params: {num_classes: 1, pretrained: false}
    data:                                # required
      kind: procedural                   # procedural | folder
      params: {image_size: 96, num_classes: 1}   # ProceduralSegmentation args (procedural)
      train_size: 512                    # procedural: samples (valid uses seed + 1)
      valid_size: 128
      train_images: data/train/images    # folder: the four folders
      train_masks: data/train/masks
      valid_images: data/valid/images
      valid_masks: data/valid/masks
      image_size: 256                    # folder: augmentation presets' size
      batch_size: 16
      num_workers: 0
    loss: {name: BCEDiceLoss, params: {}}                 # segzoo.losses.LOSSES
    optimizer: {name: Adam, params: {lr: 0.001}}          # any torch.optim class
    scheduler: {name: CosineAnnealingLR, params: {T_max: 10}}   # any torch.optim.lr_scheduler class
    callbacks:                           # segzoo.training.CALLBACKS names
      - {name: DiceCallback, params: {threshold: 0.5}}
    num_epochs: 10                       # single stage, or:
    stages:
      - {name: warmup, num_epochs: 1, optimizer: {params: {lr: 0.0003}}}
      - {name: train, num_epochs: 8}
    runner: {main_metric: dice, minimize_metric: false, verbose: true, amp: false,
             channels_last: false, device: auto, resume: null}

Command-line overrides ``key.sub=value`` are parsed as YAML (``stages.1.num_epochs=2``,
``logdir=/tmp/x``, ``scheduler={name: StepLR, params: {step_size: 5}}``); ``~key.sub`` removes a
key (``~model.params.pretrained``). YAML is read with a ``yaml.SafeLoader`` that also takes
``1e-3`` as a float and refuses aliases expanding past 100000 values. The effective config is
saved once, when a fresh run starts, as ``logdir/config.yml``; ``segzoo train --force`` replaces a
previous run and ``runner.resume`` continues one (see :mod:`segzoo.training.logdir` and
:func:`check_resume_config`). Checks that need no data run first (:mod:`segzoo.training.preflight`).
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from segzoo.errors import ConfigError, check_file_name, close_matches, short_repr, unknown_name_error
from segzoo.fileio import write_bytes_atomic
from segzoo.training import preflight
from segzoo.training.preflight import check_param_types

SCHEMA: dict[str, Any] = {
    "seed": int, "logdir": str, "num_epochs": int,
    "model": {"name": str, "params": dict},
    "data": {"kind": str, "params": dict, "train_size": int, "valid_size": int, "train_images": str,
             "train_masks": str, "valid_images": str, "valid_masks": str, "image_size": (int, list),
             "batch_size": int, "num_workers": int},
    "loss": {"name": str, "params": dict},
    "optimizer": {"name": str, "params": dict},
    "scheduler": {"name": str, "params": dict},
    "callbacks": list,
    "stages": list,
    "runner": {"main_metric": str, "minimize_metric": bool, "verbose": bool, "amp": (bool, str),
               "channels_last": bool, "compile": bool, "device": str, "resume": (str, type(None)),
               "nonfinite": str},
}
STAGE_SCHEMA = {"name": str, "num_epochs": int, "optimizer": {"name": str, "params": dict},
                "scheduler": {"name": str, "params": dict}}
REQUIRED = ("logdir", "model", "data")
FOLDER_KEYS = ("train_images", "train_masks", "valid_images", "valid_masks")
# integer settings and their smallest / largest valid value (one value must not exhaust the machine:
# a DataLoader shuffles with a permutation of train_size int64, workers are processes)
MINIMUM = {"num_epochs": 1, "data.train_size": 1, "data.valid_size": 1, "data.batch_size": 1,
           "data.num_workers": 0}
MAXIMUM = {"num_epochs": 100_000, "data.train_size": 10_000_000, "data.valid_size": 10_000_000,
           "data.batch_size": 4096, "data.num_workers": 64, "seed": 2**63 - 1}
MAX_IMAGE_SIDE = 8192
MAX_BATCH_BYTES = 2 << 30   # float32 input of one batch


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``3E+2`` as floats (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


MAX_NODES = 100_000   # YAML nodes after alias expansion (a config has hundreds)
MAX_DEPTH = 100
MAX_CONFIG_BYTES = 1 << 20


def _expanded_size(node: yaml.Node, sizes: dict[int, int], depth: int, what: str) -> int:
    """Nodes in ``node`` with every alias expanded (memoized: an alias bomb is counted, not expanded)."""
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            raise ConfigError(f"{what}: a YAML alias refers to its own anchor (a recursive value)")
        return sizes[id(node)]
    if depth > MAX_DEPTH:
        raise ConfigError(f"{what}: values nested deeper than {MAX_DEPTH} levels")
    sizes[id(node)] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, depth + 1, what)
        if total > MAX_NODES:
            raise ConfigError(f"{what}: YAML aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                              f"write the config without such repetition")
    sizes[id(node)] = total
    return total


def _yaml(text: str, what: str = "config") -> Any:
    """Parse YAML with :class:`_Loader`, refusing aliases that expand past :data:`MAX_NODES` values.

    Raises:
        ConfigError: alias bomb, recursive alias or too deep nesting (naming ``what``).
        yaml.YAMLError: invalid YAML.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, 0, what)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{what}: values nested too deeply") from None
    finally:
        loader.dispose()


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

    Raises:
        ConfigError: unknown key (closest valid named), wrong type, missing required section.
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
    model_classes = (cfg["model"].get("params") or {}).get("num_classes")
    data_classes = (cfg["data"].get("params") or {}).get("num_classes", 1)
    if model_classes is not None and model_classes != data_classes:
        raise ConfigError(f"model.params.num_classes={short_repr(model_classes)} but data.params.num_classes="
                          f"{short_repr(data_classes)}; they must match (1 = binary masks, K = K classes including "
                          f"background)")
    if data_classes != 1 and model_classes is None:
        raise ConfigError(f"data.params.num_classes={short_repr(data_classes)} but model.params.num_classes is not "
                          f"set (the model would output its default); set model.params.num_classes to the same")


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
            value = _yaml(raw, f"override {short_repr(key.strip())}")
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {short_repr(item)}: value is not valid YAML") from exc
        _set(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document of ``path`` (at most 1 MiB, UTF-8, aliases bounded).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a folder, too large, not UTF-8, invalid YAML, an alias bomb.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; give a YAML file (e.g. configs/demo.yml)")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is {size} bytes, more than a config can be ({MAX_CONFIG_BYTES} bytes); "
                              f"is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    try:
        return _yaml(text, f"config {path}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {short_repr(str(exc).splitlines()[0], 200)}") from exc


def _build_named(section: dict[str, Any], registry: dict[str, Any], kind: str, *args: Any) -> Any:
    name = section.get("name")
    if name not in registry:
        raise unknown_name_error(kind, str(name), registry)
    params = section.get("params") or {}
    check_param_types(registry[name], params, f"{kind} {name} params")
    try:
        return registry[name](*args, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind} {name}: {preflight.first_line(exc)}") from exc


def _classes(module: Any, base: type) -> dict[str, type]:
    return {n: c for n, c in vars(module).items()
            if inspect.isclass(c) and issubclass(c, base) and c is not base and not n.startswith("_")}


def registries() -> dict[str, dict[str, Any]]:
    """Everything a config can name: ``model``, ``loss``, ``optimizer``, ``scheduler``, ``callback``."""
    from segzoo.losses import LOSSES
    from segzoo.models.registry import list_models
    from segzoo.training import CALLBACKS

    schedulers = _classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    schedulers["ReduceLROnPlateau"] = torch.optim.lr_scheduler.ReduceLROnPlateau
    return {"model": dict.fromkeys(list_models()),
            "loss": {**_classes(torch.nn.modules.loss, torch.nn.modules.loss._Loss), **LOSSES},
            "optimizer": _classes(torch.optim, torch.optim.Optimizer),
            "scheduler": schedulers, "callback": dict(CALLBACKS)}


def check_names(cfg: dict[str, Any]) -> None:
    """Check every name the config uses against its registry (cheap, before anything is built).

    Raises:
        KeyError: (``NotFoundError``) an unknown name, with close matches and the valid names.
    """
    regs = registries()
    named = [("model", cfg["model"]), ("loss", cfg.get("loss")), ("optimizer", cfg.get("optimizer")),
             ("scheduler", cfg.get("scheduler"))]
    named += [("callback", c) for c in cfg.get("callbacks") or []]
    for stage in cfg.get("stages") or []:
        named += [("optimizer", stage.get("optimizer")), ("scheduler", stage.get("scheduler"))]
    for kind, section in named:
        if section and "name" in section and section["name"] not in regs[kind]:
            raise unknown_name_error(kind, str(section["name"]), regs[kind])
    for where, section in [("loss", cfg.get("loss")), ("optimizer", cfg.get("optimizer")),
                           ("scheduler", cfg.get("scheduler"))] + [(f"callbacks.{i}", c) for i, c in
                                                                     enumerate(cfg.get("callbacks") or [])]:
        if section is not None and "name" not in section:
            raise ConfigError(f"{where} needs a name")


def build_loaders(data: dict[str, Any], seed: int) -> tuple[dict[str, DataLoader], dict[str, list[float]]]:
    """DataLoaders ``train`` / ``valid`` of the ``data`` section and the normalization they use.

    Returns:
        ``({"train": DataLoader, "valid": DataLoader}, {"mean": [...], "std": [...]})``; batches are
        dicts with ``features`` (B, 3, H, W) float and ``targets`` (B, 1, H, W) float or (B, H, W) int64.
    """
    from segzoo.data import ProceduralSegmentation, SegmentationFolder, get_transforms

    params = dict(data.get("params", {}))
    kind = data.get("kind", "procedural")
    try:
        if kind == "procedural":
            train = ProceduralSegmentation(data.get("train_size", 256), seed=seed, **params)
            valid = ProceduralSegmentation(data.get("valid_size", 64), seed=seed + 1, **params)
        else:
            size = data.get("image_size", 256)
            train = SegmentationFolder(data["train_images"], data["train_masks"],
                                       transforms=get_transforms("train", size), **params)
            valid = SegmentationFolder(data["valid_images"], data["valid_masks"],
                                       transforms=get_transforms("valid", size), **params)
    except TypeError as exc:
        raise ConfigError(f"data.params: {exc}") from exc
    bs, workers = data.get("batch_size", 8), data.get("num_workers", 0)
    pin = torch.cuda.is_available()
    loaders = {"train": DataLoader(train, batch_size=bs, shuffle=True, num_workers=workers, pin_memory=pin,
                                   drop_last=len(train) > bs),
               "valid": DataLoader(valid, batch_size=bs, num_workers=workers, pin_memory=pin)}
    return loaders, {"mean": [float(v) for v in train.mean], "std": [float(v) for v in train.std]}


# config keys that may differ from the run's saved config.yml when resuming it: more epochs, and
# settings that do not change what is trained (where it runs, how it is shown, data loading speed)
RESUME_MAY_CHANGE = ("logdir", "num_epochs", "stages.N.num_epochs", "stages appended at the end", "runner.resume",
                     "runner.verbose", "runner.device", "runner.compile", "runner.channels_last", "runner.nonfinite",
                     "data.num_workers")


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            _flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = node
    return out


def _may_change(key: str, saved_stages: int) -> bool:
    if key in RESUME_MAY_CHANGE:
        return True
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1]) >= saved_stages or parts[2:] == ["num_epochs"]
    return False


def check_resume_config(saved: dict[str, Any], cfg: dict[str, Any], saved_path: Path) -> None:
    """Refuse a resumed config that differs from the run's saved ``config.yml`` beyond :data:`RESUME_MAY_CHANGE`.

    A changed learning rate, model, loss or data would be silently overridden by the saved state
    or mix two different runs in one.

    Raises:
        ConfigError: naming the first changed key and both values.
    """
    old, new = _flatten(saved, "", {}), _flatten(cfg, "", {})
    saved_stages = len(saved.get("stages") or [])
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>") and not _may_change(key, saved_stages):
            raise ConfigError(f"resuming {saved_path.parent} with {key}={short_repr(new.get(key, '<absent>'))}, but the "
                              f"run was trained with {key}={short_repr(old.get(key, '<absent>'))} ({saved_path}); only "
                              f"{', '.join(RESUME_MAY_CHANGE)} may change on resume. Start a new run (new logdir) "
                              f"for other settings")


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _num_classes(cfg: dict[str, Any]) -> int:
    value = (cfg["data"].get("params") or {}).get("num_classes", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _check_callback_params(cfg: dict[str, Any], regs: dict[str, dict[str, Any]]) -> None:
    for i, c in enumerate(cfg.get("callbacks") or []):
        if c.get("name") in regs["callback"]:
            check_param_types(regs["callback"][c["name"]], c.get("params") or {}, f"callbacks.{i} ({c['name']}) params")
        act = (c.get("params") or {}).get("activation")
        if c.get("name") in ("DiceCallback", "IouCallback") and act == "Softmax2d" and _num_classes(cfg) == 1:
            raise ConfigError(f"callbacks.{i} ({c['name']}) activation Softmax2d needs num_classes >= 2 (a softmax over "
                              f"one channel is always 1); use activation: Sigmoid for binary masks")


def train_from_config(cfg: dict[str, Any], force: bool = False, config_path: str | os.PathLike | None = None):
    """Build everything a validated config names and train.

    Order: names, types and combinations checked, the log directory checked against the policy of
    :mod:`segzoo.training.logdir`, a resumed config compared with the run's saved one, the model's
    size estimated, model / loss / callbacks / optimizers built, schedulers stepped on a throwaway
    optimizer, data loaded, one valid sample run through model and loss; then the log directory
    is claimed, ``config.yml`` written (fresh runs only) and training starts - so config mistakes
    fail before any directory is created or any epoch is spent.

    Args:
        cfg: a config that passed :func:`validate`.
        force: replace a previous run in ``logdir`` (``segzoo train --force``).
        config_path: the config file (an input: ``force`` never removes it).

    Returns:
        The final ``RunnerState`` of :meth:`segzoo.training.SupervisedRunner.train`.
    """
    from segzoo.models.registry import create_model
    from segzoo.training import Stage, SupervisedRunner, seed_everything
    from segzoo.training.logdir import CONFIG_HEADER, check_logdir_free, claim_logdir, resumes_in, run_dir_of
    from segzoo.training.resume import find_resume_file

    check_names(cfg)
    regs = registries()
    num_classes = _num_classes(cfg)
    loss_cfg = cfg.get("loss") or {"name": "BCEDiceLoss"}
    preflight.check_loss_fits(loss_cfg["name"], loss_cfg.get("params") or {}, num_classes)
    _check_callback_params(cfg, regs)
    logdir = Path(cfg["logdir"])
    runner_cfg = dict(cfg.get("runner", {}))
    resume = runner_cfg.get("resume")
    inputs = [p for p in (config_path, *(cfg["data"].get(k) for k in FOLDER_KEYS)) if p]
    if resume is not None:
        find_resume_file(resume)
        saved_path = run_dir_of(resume) / "config.yml"
        if saved_path.is_file():
            check_resume_config(read_yaml_file(saved_path) or {}, cfg, saved_path)
    for key in FOLDER_KEYS:  # the run's outputs never go into its inputs
        if key in cfg["data"] and resumes_in(logdir, cfg["data"][key]):
            raise ConfigError(f"logdir {logdir} is inside data.{key} {cfg['data'][key]}; choose a logdir outside the data")
    if _is_main_rank():
        check_logdir_free(logdir, resume=resume, overwrite=force, inputs=inputs, caller="cli")

    seed = cfg.get("seed", 42)
    model_params = cfg["model"].get("params") or {}
    count = preflight.estimate_parameters(lambda: create_model(cfg["model"]["name"],
                                                               **{**model_params, "pretrained": False}
                                                               if "pretrained" in model_params else model_params))
    if count is not None and count > preflight.MAX_PARAMETERS:
        raise ConfigError(f"model {cfg['model']['name']} with these model.params has about {count:.3g} parameters "
                          f"(limit {preflight.MAX_PARAMETERS:.0e}); lower the widths, depth or complexity")
    seed_everything(seed)  # model initialisation is part of the reproducible run
    try:
        model = create_model(cfg["model"]["name"], **model_params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params: {preflight.first_line(exc)}") from exc
    criterion = _build_named(loss_cfg, regs["loss"], "loss")
    callbacks = [_build_named(c, regs["callback"], "callback") for c in cfg.get("callbacks") or []]
    opt_cfg = cfg.get("optimizer") or {"name": "Adam", "params": {"lr": 1e-3}}

    def merged_opt(override: dict[str, Any] | None) -> dict[str, Any]:
        merged = copy.deepcopy(opt_cfg)
        if override:
            merged["name"] = override.get("name", merged.get("name"))
            merged["params"] = {**merged.get("params", {}), **override.get("params", {})}
        return merged

    loaders, normalization = build_loaders(cfg["data"], seed)
    stages, sched_names = [], []
    for i, s in enumerate(cfg.get("stages") or [{"name": "train", "num_epochs": cfg.get("num_epochs", 1)}]):
        o_cfg = merged_opt(s.get("optimizer"))
        opt = _build_named(o_cfg, regs["optimizer"], "optimizer", model.parameters())
        sched_cfg = s.get("scheduler", cfg.get("scheduler"))
        sched = _build_named(sched_cfg, regs["scheduler"], "scheduler", opt) if sched_cfg else None
        if sched is not None:
            sched_names.append(sched_cfg["name"])
            steps = s["num_epochs"] * (len(loaders["train"]) if sched_cfg["name"] in ("OneCycleLR", "CyclicLR") else 1)
            preflight.check_scheduler_steps(type(opt), o_cfg.get("params") or {}, type(sched),
                                            sched_cfg.get("params") or {}, steps, "scheduler")
        stages.append(Stage(s.get("name", f"stage{i + 1}"), s["num_epochs"], optimizer=opt, scheduler=sched))
    preflight.check_metrics(callbacks, runner_cfg.get("main_metric", "loss"), sched_names)
    preflight.check_one_batch(model, criterion, loaders["valid"].dataset[0], loss_cfg["name"])
    device = runner_cfg.pop("device", "auto")
    runner = SupervisedRunner(device=device)
    if not _is_main_rank():
        return runner.train(model, criterion, None, loaders, logdir, callbacks=callbacks, stages=stages, seed=seed,
                            normalization=normalization, **runner_cfg)
    with claim_logdir(logdir, resume=resume, overwrite=force, inputs=inputs, caller="cli"):
        if not resumes_in(resume, logdir):
            write_bytes_atomic(logdir / "config.yml", (CONFIG_HEADER + yaml.safe_dump(cfg, sort_keys=False)).encode())
        return runner.train(model, criterion, None, loaders, logdir, callbacks=callbacks, stages=stages, seed=seed,
                            normalization=normalization, **runner_cfg)


# ---- `segzoo train` (its arguments: segzoo.cli_args.add_train_arguments) ------------------

def run(args) -> int:
    """Train from the config; prints per-epoch Dice/IoU; returns 0 on success."""
    cfg = load_config(args.config, args.overrides)
    state = train_from_config(cfg, force=args.force, config_path=args.config)
    best = state.best_valid_metric
    print(f"done: best valid {state.main_metric}={best:.4f}; checkpoints in {Path(cfg['logdir']) / 'checkpoints'}")
    return 0
