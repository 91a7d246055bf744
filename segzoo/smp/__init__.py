"""An smp-compatible front door: ``import segzoo.smp as smp`` in place of ``import segmentation_models_pytorch as smp``.

smp 0.6's public constructors (``smp.Unet(encoder_name=..., classes=...)`` and the other architectures
segzoo's table has), :func:`create_model`, :func:`from_pretrained`, :mod:`~segzoo.smp.encoders`
(preprocessing parameters, offline), :mod:`~segzoo.smp.losses` and :mod:`~segzoo.smp.metrics` with smp's
names, modes and values, all built on segzoo's parts; :func:`from_smp` / :func:`load_smp_state_dict`
load smp's own weights (:mod:`~segzoo.smp.statedict`). segzoo's own classes (``segzoo.losses``,
``segzoo.metrics``, ``segzoo.Unet``) keep their own meaning; README.md's smp section says which is which.
"""

from __future__ import annotations

from segzoo.smp import datasets, encoders, losses, metrics
from segzoo.smp.models import MODEL_CLASSES, SmpModel, create_model
from segzoo.smp.pretrained import from_pretrained
from segzoo.smp.statedict import from_smp, load_smp_state_dict

globals().update(MODEL_CLASSES)

__all__ = ["datasets", "encoders", "losses", "metrics", "create_model", "from_pretrained", "SmpModel", "from_smp",
           "load_smp_state_dict", *MODEL_CLASSES]
