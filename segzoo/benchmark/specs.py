"""Plain-data model specs for benchmarks: segzoo models, their smp 0.6 twins, encoder bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from segzoo.architectures import ARCHITECTURES, RESNET_ENCODERS, smp_twins
from segzoo.errors import unknown_name_error

__all__ = ["SMP_ARCHS", "ARCHS", "segzoo_spec", "smp_spec", "body_spec", "spec_label", "smp_available",
           "build_model", "default_suite"]

# segzoo architecture (registry suffix) -> the smp 0.6 class it is compared with (the table's ``smp`` column)
SMP_ARCHS = smp_twins()
# every architecture of the table (those without an smp twin are benchmarked alone)
ARCHS = tuple(ARCHITECTURES)
# the plain ViT the token-map architectures (DPT) are benchmarked on, segzoo's and smp's alike
VIT_ENCODER = "timm:vit_small_patch16_224"


def segzoo_spec(arch: str, encoder: str = "resnet34", **kwargs: Any) -> dict[str, Any]:
    """Spec of a segzoo model: ``{encoder}_{arch}`` from the registry for ResNets, else the
    generic model with a ``TimmEncoder(encoder)`` (``encoder="timm:<name>"``)."""
    if arch not in ARCHITECTURES:
        raise unknown_name_error("architecture", arch, ARCHITECTURES)
    if encoder.startswith("timm:"):
        return {"library": "segzoo", "name": arch, "timm_encoder": encoder[5:], "kwargs": kwargs,
                "pair": f"{encoder}/{arch}"}
    return {"library": "segzoo", "name": f"{encoder}_{arch}", "kwargs": {"pretrained": False, **kwargs},
            "pair": f"{encoder}/{arch}"}


def smp_spec(arch: str, encoder: str = "resnet34", **kwargs: Any) -> dict[str, Any]:
    """Spec of the smp 0.6 model matching ``segzoo_spec(arch, encoder)``, built as its users do
    (``smp.Unet("resnet34", encoder_weights=None, classes=K)``; timm encoders as ``"tu-<name>"``)."""
    if arch not in SMP_ARCHS:
        raise unknown_name_error("architecture", arch, SMP_ARCHS)
    name = "tu-" + encoder[5:] if encoder.startswith("timm:") else encoder
    return {"library": "smp", "name": SMP_ARCHS[arch], "encoder": name, "kwargs": kwargs, "pair": f"{encoder}/{arch}"}


def body_spec(encoder: str = "resnet34") -> dict[str, Any]:
    """Spec of a torchvision ResNet body alone (conv1 ... layer4), the reference for GFLOP/s."""
    return {"library": "torchvision", "name": encoder}


def spec_label(spec: dict[str, Any]) -> str:
    """Short display name of a spec."""
    lib = spec.get("library", "?")
    if lib == "smp":
        return f"smp {spec['name']}({spec['encoder']})"
    if lib == "torchvision":
        return f"{spec['name']} body"
    layout = spec.get("kwargs", {}).get("channels_last")
    suffix = f" [channels_last={layout}]" if layout is not None else ""
    if "timm_encoder" in spec:
        return f"segzoo {spec['name']}(timm {spec['timm_encoder']}){suffix}"
    return f"segzoo {spec['name']}{suffix}"


def smp_available() -> bool:
    """Whether segmentation_models_pytorch can be imported."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(spec: dict[str, Any], num_classes: int = 1) -> nn.Module:
    """Build the model a spec describes (random weights, nothing downloaded).

    Specs are plain dicts: ``{"library": "segzoo", "name": <registry name>, "kwargs": {...}}``
    (optionally ``"timm_encoder": <timm name>`` with a generic architecture name),
    ``{"library": "smp", "name": "Unet", "encoder": "resnet34", "kwargs": {...}}`` or
    ``{"library": "torchvision", "name": "resnet34"}`` (the body conv1 ... layer4).

    Raises:
        KeyError: unknown library or model name.
        ImportError: smp requested but not installed.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"model spec must be a dict, got {type(spec).__name__}")
    lib, name, kwargs = spec.get("library"), spec.get("name"), dict(spec.get("kwargs") or {})
    if lib == "segzoo":
        from segzoo.models import create_model

        if "timm_encoder" in spec:
            from segzoo.encoders import TimmEncoder

            kwargs["encoder"] = TimmEncoder(spec["timm_encoder"], pretrained=False)
        return create_model(name, num_classes=num_classes, **kwargs)
    if lib == "smp":
        import segmentation_models_pytorch as smp

        if not hasattr(smp, str(name)):
            raise unknown_name_error("smp architecture", str(name), sorted(SMP_ARCHS.values()))
        return getattr(smp, name)(spec["encoder"], encoder_weights=None, classes=num_classes, **kwargs)
    if lib == "torchvision":
        import torchvision

        if not str(name).startswith("resnet") or not hasattr(torchvision.models, str(name)):
            raise unknown_name_error("torchvision resnet", str(name), RESNET_ENCODERS)
        net = getattr(torchvision.models, name)(weights=None)
        return nn.Sequential(*list(net.children())[:-2])
    raise unknown_name_error("benchmark library", str(lib), ("segzoo", "smp", "torchvision"))


def _is_vit(encoder: str) -> bool:
    """Whether a benchmark encoder (``resnet34``, ``timm:<name>``) is a plain ViT, the encoder DPT takes."""
    if not encoder.startswith("timm:"):
        return False
    from segzoo.encoders.vit import is_plain_vit

    return is_plain_vit(encoder[5:])


def default_suite(encoders: Sequence[str] = ("resnet18", "resnet34", "resnet50", "timm:efficientnet_b0"),
                  archs: Sequence[str] = ARCHS, with_smp: bool | None = None,
                  with_body: bool = True) -> list[dict[str, Any]]:
    """segzoo models for every encoder x architecture, each followed by its smp twin (when smp is
    installed, or when ``with_smp`` is True) and, per ResNet, the encoder body alone."""
    with_smp = smp_available() if with_smp is None else with_smp
    specs: list[dict[str, Any]] = []
    tokens = [arch for arch in archs if ARCHITECTURES[arch].encoder_kind == "tokens"]
    vits = [enc for enc in encoders if _is_vit(enc)]
    if tokens and not vits:  # DPT runs on a plain ViT only: the small one
        encoders = [*encoders, VIT_ENCODER]
    for enc in encoders:
        if with_body and not enc.startswith("timm:"):
            specs.append(body_spec(enc))
        is_vit = _is_vit(enc)
        for arch in archs:
            if (arch in tokens) != is_vit:  # an encoder of the other kind cannot serve it
                continue
            specs.append(segzoo_spec(arch, enc))
            if with_smp and arch in SMP_ARCHS:
                # smp's ViT encoders take only their pretraining size without dynamic_img_size
                specs.append(smp_spec(arch, enc, **({"dynamic_img_size": True} if is_vit else {})))
    return specs
