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
``1e-3`` as a float. The effective config is saved as ``logdir/config.yml``.
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from segzoo.errors import ConfigError, check_file_name, close_matches, unknown_name_error

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
# integer settings and their smallest valid value
MINIMUM = {"num_epochs": 1, "data.train_size": 1, "data.valid_size": 1, "data.batch_size": 1,
           "data.num_workers": 0}


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


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _check(node: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            raise ConfigError(f"{where or 'config'} must be a mapping, got {type(node).__name__}")
        for key, value in node.items():
            if key not in schema:
                hint = close_matches(str(key), schema)
                raise ConfigError(f"unknown config key {where + '.' if where else ''}{key}"
                                  + (f"; did you mean {hint[0]!r}?" if hint else "")
                                  + f" (valid: {', '.join(schema)})")
            _check(value, schema[key], f"{where}.{key}" if where else str(key))
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(node, bool) and bool not in types:
        raise ConfigError(f"{where} must be {' or '.join(t.__name__ for t in types)}, got a bool")
    if not isinstance(node, types):
        raise ConfigError(f"{where} must be {' or '.join(t.__name__ for t in types)}, "
                          f"got {type(node).__name__} {node!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Check the whole config before anything heavy runs.

    Raises:
        ConfigError: unknown key (closest valid named), wrong type, missing required section.
    """
    _check(cfg, SCHEMA, "")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ConfigError(f"config is missing required key(s) {missing}")
    for dotted, low in MINIMUM.items():
        section, _, key = dotted.rpartition(".")
        value = (cfg.get(section) or {}).get(key) if section else cfg.get(key)
        if value is not None and value < low:
            raise ConfigError(f"{dotted} must be >= {low}, got {value}")
    for i, stage in enumerate(cfg.get("stages") or []):
        _check(stage, STAGE_SCHEMA, f"stages.{i}")
        if "num_epochs" not in stage:
            raise ConfigError(f"stages.{i} needs num_epochs")
        if stage["num_epochs"] < 1:
            raise ConfigError(f"stages.{i}.num_epochs must be >= 1, got {stage['num_epochs']}")
        try:
            check_file_name(stage.get("name", "stage"), f"stages.{i}.name")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for i, cb in enumerate(cfg.get("callbacks") or []):
        _check(cb, {"name": str, "params": dict}, f"callbacks.{i}")
    if "name" not in cfg["model"]:
        raise ConfigError("model.name is required (see `segzoo models`)")
    kind = cfg["data"].get("kind", "procedural")
    if kind not in ("procedural", "folder"):
        raise ConfigError(f"data.kind must be 'procedural' or 'folder', got {kind!r}")
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
        raise ConfigError(f"model.params.num_classes={model_classes} but data.params.num_classes={data_classes}; "
                          f"they must match (1 = binary masks, K = K classes including background)")


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        try:
            key: Any = int(part) if isinstance(node, list) else part
            node = node[key] if isinstance(node, list) else node.setdefault(key, {})
        except (IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i + 1])} does not exist") from exc
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"override {dotted!r}: no list item {last}") from exc
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:-1])} is not a mapping")


def _delete(cfg: dict[str, Any], dotted: str) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    try:
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[int(parts[-1]) if isinstance(node, list) else parts[-1]]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(f"override ~{dotted}: there is no {dotted} to remove") from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate.

    Raises:
        FileNotFoundError: no such config file.
        ConfigError: invalid YAML, bad override, or an invalid config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg = _yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from exc
    for item in overrides or []:
        if item.startswith("~") and "=" not in item:
            _delete(cfg, item[1:].strip())
            continue
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (or ~key.sub to remove a key)")
        key, raw = item.split("=", 1)
        try:
            _set(cfg, key.strip(), _yaml(raw))
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
    validate(cfg)
    return cfg


def _build_named(section: dict[str, Any], registry: dict[str, Any], kind: str, *args: Any) -> Any:
    name = section.get("name")
    if name not in registry:
        raise unknown_name_error(kind, str(name), registry)
    try:
        return registry[name](*args, **section.get("params", {}))
    except TypeError as exc:
        raise ConfigError(f"{kind} {name}: {exc}") from exc


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


def train_from_config(cfg: dict[str, Any]):
    """Build everything a validated config names and train.

    Order: names checked, model / loss / callbacks / optimizers built, data loaded, config
    saved to ``logdir/config.yml``, then training - so config mistakes fail before any work.

    Returns:
        The final ``RunnerState`` of :meth:`segzoo.training.SupervisedRunner.train`.
    """
    from segzoo.models.registry import create_model
    from segzoo.training import Stage, SupervisedRunner, seed_everything

    check_names(cfg)
    regs = registries()
    seed = cfg.get("seed", 42)
    seed_everything(seed)  # model initialisation is part of the reproducible run
    logdir = Path(cfg["logdir"])
    try:
        model = create_model(cfg["model"]["name"], **cfg["model"].get("params", {}))
    except TypeError as exc:
        raise ConfigError(f"model.params: {exc}") from exc
    criterion = _build_named(cfg.get("loss") or {"name": "BCEDiceLoss"}, regs["loss"], "loss")
    callbacks = [_build_named(c, regs["callback"], "callback") for c in cfg.get("callbacks") or []]
    opt_cfg = cfg.get("optimizer") or {"name": "Adam", "params": {"lr": 1e-3}}

    def make_opt(override: dict[str, Any] | None):
        merged = copy.deepcopy(opt_cfg)
        if override:
            merged["name"] = override.get("name", merged.get("name"))
            merged["params"] = {**merged.get("params", {}), **override.get("params", {})}
        return _build_named(merged, regs["optimizer"], "optimizer", model.parameters())

    stages = []
    for i, s in enumerate(cfg.get("stages") or [{"name": "train", "num_epochs": cfg.get("num_epochs", 1)}]):
        opt = make_opt(s.get("optimizer"))
        sched_cfg = s.get("scheduler", cfg.get("scheduler"))
        sched = _build_named(sched_cfg, regs["scheduler"], "scheduler", opt) if sched_cfg else None
        stages.append(Stage(s.get("name", f"stage{i + 1}"), s["num_epochs"], optimizer=opt, scheduler=sched))
    loaders, normalization = build_loaders(cfg["data"], seed)
    runner_cfg = dict(cfg.get("runner", {}))
    device = runner_cfg.pop("device", "auto")
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    runner = SupervisedRunner(device=device)
    return runner.train(model, criterion, None, loaders, logdir, callbacks=callbacks, stages=stages, seed=seed,
                        normalization=normalization, **runner_cfg)


# ---- `segzoo train` (its arguments: segzoo.cli_args.add_train_arguments) ------------------

def run(args) -> int:
    """Train from the config; prints per-epoch Dice/IoU; returns 0 on success."""
    cfg = load_config(args.config, args.overrides)
    state = train_from_config(cfg)
    best = state.best_valid_metric
    print(f"done: best valid {state.main_metric}={best:.4f}; checkpoints in {Path(cfg['logdir']) / 'checkpoints'}")
    return 0
