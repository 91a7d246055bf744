"""Building what a validated config names: loss, callbacks, model, optimizers and schedulers per stage, loaders.

Names are resolved once, here, against :func:`registries` (one :class:`~segzoo.registry.Registry` per kind); unknown names raise
:class:`~segzoo.errors.NotFoundError` listing close matches, bad parameters a one-line
:class:`~segzoo.errors.ConfigError` naming the config key.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler

from segzoo.errors import ConfigError, short_repr
from segzoo.registry import Registry
from segzoo.training import preflight
from segzoo.training.loop import seed_everything
from segzoo.training.preflight import check_param_types
from segzoo.training.runner import Stage

FOLDER_KEYS = ("train_images", "train_masks", "valid_images", "valid_masks")
DEFAULT_LOSS = {"name": "BCEDiceLoss"}
DEFAULT_OPTIMIZER = {"name": "Adam", "params": {"lr": 1e-3}}


def build_named(section: dict[str, Any], registry: Registry, kind: str, *args: Any) -> Any:
    """``registry[section["name"]](*args, **section["params"])``, its parameters checked first.

    ``kind`` names the config section in messages (the registry's own kind in an unknown-name error).

    Raises:
        NotFoundError: an unknown name (close matches listed).
        ConfigError: a parameter of the wrong type, or the constructor refused the parameters.
    """
    name = section.get("name")
    factory = registry[name]
    params = section.get("params") or {}
    check_param_types(factory, params, f"{kind} {name} params")
    try:
        return factory(*args, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind} {name}: {preflight.first_line(exc)}") from exc


def registries() -> dict[str, Registry]:
    """Everything a config can name, one :class:`~segzoo.registry.Registry` per kind: ``model``, ``loss``,
    ``optimizer``, ``scheduler``, ``callback``.

    Models and callbacks are segzoo's registries; losses are :data:`segzoo.losses.LOSSES` and the
    other ``torch.nn`` losses; optimizers and schedulers the classes of ``torch.optim``. Built at
    each call, so that names registered since are found.
    """
    from segzoo.losses import LOSSES
    from segzoo.models.registry import MODELS
    from segzoo.training import CALLBACKS

    losses = Registry("loss")
    losses.include(LOSSES)
    losses.register_classes(torch.nn.modules.loss, torch.nn.modules.loss._Loss)
    optimizers = Registry("optimizer")
    optimizers.register_classes(torch.optim, torch.optim.Optimizer)
    schedulers = Registry("scheduler")
    schedulers.register_classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    if "ReduceLROnPlateau" not in schedulers:  # not an LRScheduler before torch 2.2
        schedulers.register("ReduceLROnPlateau", torch.optim.lr_scheduler.ReduceLROnPlateau)
    return {"model": MODELS, "loss": losses, "optimizer": optimizers, "scheduler": schedulers, "callback": CALLBACKS}


def check_names(cfg: dict[str, Any]) -> None:
    """Check every name the config uses against its registry (cheap, before anything is built).

    Raises:
        KeyError: (``NotFoundError``) an unknown name, with close matches and the valid names.
    """
    regs = registries()
    named = [("model", cfg["model"]), ("loss", cfg.get("loss")), ("loss", cfg.get("aux_loss")), ("optimizer", cfg.get("optimizer")),
             ("scheduler", cfg.get("scheduler"))]
    named += [("callback", c) for c in cfg.get("callbacks") or []]
    for stage in cfg.get("stages") or []:
        named += [("optimizer", stage.get("optimizer")), ("scheduler", stage.get("scheduler"))]
    for kind, section in named:
        if section and "name" in section:
            regs[kind][section["name"]]  # noqa: B018  (raises for an unknown name)
    for where, section in [("loss", cfg.get("loss")), ("aux_loss", cfg.get("aux_loss")),
                           ("optimizer", cfg.get("optimizer")),
                           ("scheduler", cfg.get("scheduler"))] + [(f"callbacks.{i}", c) for i, c in
                                                                     enumerate(cfg.get("callbacks") or [])]:
        if section is not None and "name" not in section:
            raise ConfigError(f"{where} needs a name")


def build_loaders(data: dict[str, Any], seed: int) -> tuple[dict[str, DataLoader], dict[str, list[float]]]:
    """DataLoaders ``train`` / ``valid`` of the ``data`` section and the normalization they use.

    The datasets get ``normalize="auto"`` unless ``data.params`` says otherwise: 8-bit images travel
    as uint8 and the training loop normalizes each batch on the device. Worker settings:
    :func:`~segzoo.training.data_path.loader_options`.

    Returns:
        ``({"train": DataLoader, "valid": DataLoader}, {"mean": [...], "std": [...]})``; batches are
        dicts with ``features`` (B, 3, H, W) (uint8 with ``normalize`` batch, else float) and ``targets``
        (B, 1, H, W) float or (B, H, W) int64.
    """
    from segzoo.data import ProceduralSegmentation, SegmentationFolder, get_transforms

    params = {"normalize": "auto", **data.get("params", {})}  # uint8 batches normalized on the device
    kind = data.get("kind", "procedural")
    try:
        if kind == "procedural":
            train = ProceduralSegmentation(data.get("train_size", 256), seed=seed, **params)
            valid = ProceduralSegmentation(data.get("valid_size", 64), seed=seed + 1, **params)
        else:
            size = data.get("image_size", 256)
            train = SegmentationFolder(data["train_images"], data["train_masks"],
                                       transforms=get_transforms("train", size, seed=seed), **params)
            valid = SegmentationFolder(data["valid_images"], data["valid_masks"],
                                       transforms=get_transforms("valid", size, seed=seed + 1), **params)
    except TypeError as exc:
        raise ConfigError(f"data.params: {exc}") from exc
    from segzoo.training.data_path import loader_options

    bs = data.get("batch_size", 8)
    options = loader_options(data.get("num_workers", "auto"), data.get("prefetch_factor"))
    train_options, valid_options = {**options, "shuffle": True}, dict(options)
    if options["num_workers"]:
        # A resumed run must go on as the uninterrupted one: persistent workers take their seed once, from
        # a generator of their own, so that no epoch draws from the run's random state for them (a new
        # worker would in the resumed run's first epoch); the shuffling still draws from the run's state.
        valid_options["generator"] = torch.Generator().manual_seed(seed + 1)
        train_options.update(shuffle=False, sampler=RandomSampler(train), generator=torch.Generator().manual_seed(seed))
    loaders = {"train": DataLoader(train, batch_size=bs, drop_last=len(train) > bs, **train_options),
               "valid": DataLoader(valid, batch_size=bs, **valid_options)}
    return loaders, {"mean": [float(v) for v in train.mean], "std": [float(v) for v in train.std]}


def num_classes(cfg: dict[str, Any]) -> int:
    """``data.params.num_classes`` (1, binary masks, when unset or not an int)."""
    value = (cfg["data"].get("params") or {}).get("num_classes", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def check_callback_params(cfg: dict[str, Any], regs: dict[str, Registry]) -> None:
    """Check the parameter types of every callback, and Dice/IoU activations against the number of classes.

    Raises:
        ConfigError: naming ``callbacks.i`` and the parameter.
    """
    for i, c in enumerate(cfg.get("callbacks") or []):
        if c.get("name") in regs["callback"]:
            check_param_types(regs["callback"][c["name"]], c.get("params") or {}, f"callbacks.{i} ({c['name']}) params")
        act = (c.get("params") or {}).get("activation")
        if c.get("name") in ("DiceCallback", "IouCallback") and act == "Softmax2d" and num_classes(cfg) == 1:
            raise ConfigError(f"callbacks.{i} ({c['name']}) activation Softmax2d needs num_classes >= 2 (a softmax over "
                              f"one channel is always 1); use activation: Sigmoid for binary masks")


def model_from_config(model_cfg: dict[str, Any], seed: int) -> nn.Module:
    """The ``model`` section's model, after its parameter count was estimated within the bound.

    The model is created right after ``seed_everything(seed)``: its initialisation is part of
    the reproducible run.

    Raises:
        ConfigError: too many parameters (:data:`~segzoo.training.preflight.MAX_PARAMETERS`), or
            ``model.params`` the model refuses.
    """
    from segzoo.models.registry import create_model

    params = model_cfg.get("params") or {}
    count = preflight.estimate_parameters(lambda: create_model(model_cfg["name"], **{**params, "pretrained": False}
                                                               if "pretrained" in params else params))
    if count is not None and count > preflight.MAX_PARAMETERS:
        raise ConfigError(f"model {model_cfg['name']} with these model.params has about {count:.3g} parameters "
                          f"(limit {preflight.MAX_PARAMETERS:.0e}); lower the widths, depth or complexity")
    seed_everything(seed)
    try:
        return create_model(model_cfg["name"], **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params: {preflight.first_line(exc)}") from exc


def stage_configs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage of ``cfg`` as it is built: ``{"name", "num_epochs", "optimizer": {"name", "params"},
    "scheduler": {"name", "params"}}`` (no ``"scheduler"``: none).

    A one-stage config is the stage ``"train"`` of ``num_epochs`` (default 1). A stage's optimizer
    is the top-level one (default :data:`DEFAULT_OPTIMIZER`) with the stage's ``name`` / ``params``
    on top; its scheduler is the stage's, else the top-level one. So ``num_epochs: 4`` with a
    top-level scheduler and ``stages: [{name: train, num_epochs: 4, scheduler: ...}]`` give the same list.
    """
    opt_cfg = cfg.get("optimizer") or DEFAULT_OPTIMIZER
    out = []
    for i, s in enumerate(cfg.get("stages") or [{"name": "train", "num_epochs": cfg.get("num_epochs", 1)}]):
        o_cfg = copy.deepcopy(opt_cfg)
        o_cfg["params"] = dict(o_cfg.get("params") or {})
        if s.get("optimizer"):
            o_cfg["name"] = s["optimizer"].get("name", o_cfg.get("name"))
            o_cfg["params"].update(copy.deepcopy(s["optimizer"].get("params") or {}))
        stage = {"name": s.get("name", f"stage{i + 1}"), "num_epochs": s["num_epochs"], "optimizer": o_cfg}
        sched_cfg = s.get("scheduler", cfg.get("scheduler"))
        if sched_cfg:
            stage["scheduler"] = {**copy.deepcopy(sched_cfg), "params": copy.deepcopy(sched_cfg.get("params") or {})}
        out.append(stage)
    return out


def build_stages(cfg: dict[str, Any], model: nn.Module, train_batches: int,
                 regs: dict[str, Registry]) -> tuple[list[Stage], list[str]]:
    """One :class:`~segzoo.training.Stage` per :func:`stage_configs` item.

    Each stage gets a fresh optimizer and its scheduler, whose step count is checked against the
    stage's epochs (times ``train_batches`` for per-batch schedulers).

    Returns:
        ``(stages, scheduler names)``.

    Raises:
        NotFoundError / ConfigError: as :func:`build_named`; a schedule that does not fit the stage.
    """
    stages, sched_names = [], []
    for s in stage_configs(cfg):
        o_cfg, sched_cfg = s["optimizer"], s.get("scheduler")
        opt = build_named(o_cfg, regs["optimizer"], "optimizer", model.parameters())
        sched = build_named(sched_cfg, regs["scheduler"], "scheduler", opt) if sched_cfg else None
        if sched is not None:
            sched_names.append(sched_cfg["name"])
            steps = s["num_epochs"] * (train_batches if sched_cfg["name"] in ("OneCycleLR", "CyclicLR") else 1)
            preflight.check_scheduler_steps(type(opt), o_cfg["params"], type(sched), sched_cfg["params"], steps,
                                            "scheduler")
        stages.append(Stage(s["name"], s["num_epochs"], optimizer=opt, scheduler=sched))
    return stages, sched_names


def aux_callbacks(cfg: dict[str, Any], model: Any, callbacks: list[Any], regs: dict[str, Registry],
                  sample: Any) -> list[Any]:
    """The callbacks of ``aux_loss`` (none without it): a CriterionCallback adding the labels' loss, and
    :class:`~segzoo.training.callbacks.LabelAccuracyCallback` (``label_accuracy``).

    Args:
        cfg: the config.
        model: the built model (its ``aux_classes`` must be set: ``model.params.aux_params``).
        callbacks: the config's callbacks (a CriterionCallback there cannot take a loss object).
        regs: :func:`registries`.
        sample: ``dataset[0]`` of the valid data, which must hold ``aux_loss.target_key``.

    Raises:
        ConfigError: one line naming the missing setting.
    """
    from segzoo.training.callbacks import CriterionCallback, LabelAccuracyCallback

    aux = cfg.get("aux_loss")
    if aux is None:
        return []
    classes = getattr(model, "aux_classes", None)
    if classes is None:
        raise ConfigError("aux_loss needs a model with a classification head: set model.params.aux_params: "
                          "{classes: K}")
    key = aux.get("target_key", "label")
    if isinstance(sample, dict) and key not in sample:
        raise ConfigError(f"aux_loss: the data's items have no {key!r} target (keys: {sorted(sample)}); "
                          f"procedural data gives one with data.params.labels: true")
    target = sample.get(key) if isinstance(sample, dict) else None
    if isinstance(target, torch.Tensor) and target.is_floating_point() and target.shape[-1:] != (classes,):
        raise ConfigError(f"aux_loss: the data gives {tuple(target.shape)} labels per image but "
                          f"model.params.aux_params.classes is {classes}")
    if any(isinstance(cb, CriterionCallback) for cb in callbacks):
        raise ConfigError("aux_loss: remove the CriterionCallback from callbacks (aux_loss adds its own)")
    criterion = build_named(aux, regs["loss"], "aux_loss")
    weight = aux.get("weight", 0.4)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ConfigError(f"aux_loss.weight must be a finite number, got {short_repr(weight)}")
    return [CriterionCallback(aux_criterion=criterion, aux_weight=weight, aux_target_key=key),
            LabelAccuracyCallback(input_key=key)]
