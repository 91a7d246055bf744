"""What a deployable file must carry besides its graph: normalization, classes, channels, model spec.

A checkpoint holds its ``normalization`` and ``model_spec``; a TorchScript, ``.pt2`` or ONNX file
does not unless segzoo puts it there. The same JSON object is stored in all three:

- ONNX: ``metadata_props`` entry ``"segzoo"`` (read back with onnxruntime's
  ``session.get_modelmeta().custom_metadata_map``);
- TorchScript: extra file ``segzoo.json`` (``torch.jit.save(..., _extra_files=...)``);
- ``.pt2``: extra file ``segzoo.json`` (``torch.export.save(..., extra_files=...)``).

Keys: ``normalization`` ({"mean", "std"} or null), ``model_spec`` (registry name + kwargs or
null), ``num_classes``, ``in_channels``, ``size_multiple``, ``segzoo_version``; for a model built with
``aux_params`` also ``aux_classes`` (its image-level labels; the file then has two outputs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

METADATA_KEY = "segzoo"
EXTRA_FILE = "segzoo.json"


def model_metadata(model: nn.Module, normalization: Mapping[str, Any] | None = None,
                   model_spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata object of ``model`` (see the module docstring); JSON-serializable."""
    from segzoo import __version__
    from segzoo.models.registry import get_model_spec

    spec = model_spec if model_spec is not None else get_model_spec(model)
    num_classes = getattr(model, "num_classes", None)
    in_channels = getattr(model, "in_channels", None)
    aux = getattr(model, "aux_classes", None)
    return {
        **({"aux_classes": int(aux)} if aux is not None else {}),
        "normalization": ({"mean": [float(v) for v in normalization["mean"]],
                           "std": [float(v) for v in normalization["std"]]} if normalization else None),
        "model_spec": json.loads(json.dumps(spec, default=str)) if spec else None,
        "num_classes": int(num_classes) if num_classes is not None else None,
        "in_channels": int(in_channels) if in_channels is not None else None,
        "size_multiple": int(getattr(model, "size_multiple", 1) or 1),
        "segzoo_version": __version__,
    }


def dumps(metadata: Mapping[str, Any]) -> str:
    """The JSON text stored in files."""
    return json.dumps(dict(metadata), sort_keys=True)


def parse(text: str | bytes | None, source: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata object from stored JSON text; ``None`` for no text.

    Raises:
        ValueError: text that is not a JSON object (naming ``source``).
    """
    if text is None or (isinstance(text, (str, bytes)) and not text):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(f"{os.fspath(source)}: the stored segzoo metadata is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(source)}: the stored segzoo metadata is a {type(data).__name__}, "
                         f"expected a JSON object")
    return data


def torchscript_extra_files(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """``_extra_files`` argument of ``torch.jit.save`` holding ``metadata`` (empty for ``None``)."""
    return {EXTRA_FILE: dumps(metadata)} if metadata else {}


def add_onnx_metadata(data: bytes, metadata: Mapping[str, Any] | None) -> bytes:
    """Return the serialized ONNX model ``data`` with ``metadata`` in its ``metadata_props`` (key ``"segzoo"``).

    Works on bytes so that the exporter writes the file once, atomically (see :mod:`segzoo.fileio`).
    """
    if not metadata:
        return data
    import onnx

    proto = onnx.load_from_string(data)
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, dumps(metadata)
    return proto.SerializeToString()


def read_onnx_metadata(session: Any, source: str | os.PathLike) -> dict[str, Any] | None:
    """Metadata stored in an ONNX model, from its onnxruntime ``InferenceSession`` (``None`` if absent)."""
    props = session.get_modelmeta().custom_metadata_map or {}
    return parse(props.get(METADATA_KEY), source)
