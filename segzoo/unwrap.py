"""The user's model inside the wrappers training puts around it (DistributedDataParallel, torch.compile)."""

from __future__ import annotations

import sys

import torch.nn as nn

_DATA_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _compiled_type() -> type | None:
    """``torch.compile``'s wrapper class, when torch.compile was used in this process (else nothing is compiled)."""
    module = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(module, "OptimizedModule", None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model`` without its DataParallel / DistributedDataParallel / ``torch.compile`` wrappers, nested in any order.

    Only those wrapper types are unwrapped: a user's own module that happens to hold a child named
    ``module`` or ``_orig_mod`` is returned as it is.
    """
    while True:
        compiled = _compiled_type()
        if isinstance(model, _DATA_PARALLEL):
            model = model.module
        elif compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model
