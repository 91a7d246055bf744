"""The settings of a training run (:class:`TrainSettings`), and the keywords of ``Runner.train`` mapped onto them.

``Runner.train(model, criterion, optimizer, loaders, logdir, callbacks, scheduler, stages=...)`` takes
what the run trains with; how it runs is one :class:`TrainSettings`, given as ``settings=`` or as
its fields spelled as keywords (``num_epochs=10, main_metric="dice"``), as scripts always did. The
Catalyst 19.x spellings ``fp16=`` and ``monitoring_params=`` are mapped onto ``amp`` or refused
(:mod:`segzoo.training.catalyst_args`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segzoo.training.catalyst_args import check_monitoring_params, fp16_to_amp

# train() keywords that are Catalyst 19.x spellings of a setting, not settings themselves
CATALYST_KEYWORDS = ("fp16", "monitoring_params")


@dataclass(frozen=True)
class TrainSettings:
    """How :meth:`~segzoo.training.Runner.train` runs (each field is also a keyword of ``train``).

    Args:
        num_epochs: epochs of the single stage when ``stages`` is not given.
        main_metric: valid metric that selects ``best.pth`` (e.g. ``"dice"``).
        minimize_metric: lower ``main_metric`` is better.
        verbose: show tqdm progress bars.
        resume: a log directory (its ``last_full.pth``) or a checkpoint file to continue from;
            a light file is replaced by its ``_full`` sibling when there is one.
            ``CheckpointCallback(resume=...)`` is used when this is ``None``.
        valid_loader: name of the validation loader.
        seed: seed python, numpy and torch first (reproducible CPU runs).
        amp: ``None`` (not given: ``precision`` decides), ``False`` (fp32), ``True`` (fp16 on CUDA, bf16
            elsewhere), ``"fp16"`` or ``"bf16"`` autocast; fp16 on CUDA uses a GradScaler. The older
            spelling of ``precision``: giving both with different meanings raises.
        precision: ``"auto"`` (bf16 autocast where the device computes bf16 natively, fp32 elsewhere:
            :mod:`segzoo.hardware.precision`), ``"fp32"``, ``"bf16"`` or ``"fp16"``. Losses, metrics and
            the optimizer state stay float32; the choice is stored in checkpoints (``"precision"``).
        channels_last: the layout: ``"auto"``, ``True``, ``False`` as a segzoo model's own setting, which
            the runner sets (other modules: the model and 4-D float inputs converted for ``True``);
            ``None`` leaves the model's choice (:mod:`segzoo.training.layout`).
        compile: wrap the model with ``torch.compile`` (a dict gives its options); ``"auto"`` compiles only
            when the measured compile time is repaid over the run's planned steps, and trains eagerly
            after one warning line if compiling fails (:func:`~segzoo.training.run_choices.choose_compile`).
        normalization: ``{"mean": [...], "std": [...]}`` of the inputs, stored in checkpoints.
        nonfinite: on a NaN/inf loss ``"raise"`` (stop with an error naming the loss and where)
            or ``"skip"`` (skip the batch; counted in ``state.skipped_batches``).
        checkpoint_data: extra plain data stored in every checkpoint.
        check: Catalyst's quick check: at most 4 batches per loader and 3 epochs per stage.
        timeit: add a :class:`~segzoo.training.callbacks.TimerCallback` (``_timers/data_time``,
            ``_timers/batch_time`` metrics).
        overwrite_logdir: replace the previous run in a ``logdir`` that already holds one (only the
            files segzoo writes there are removed). Without it, unless ``resume`` points into it, that
            run is moved aside to ``LOGDIR.1`` (``.2``...; one warning); see :mod:`segzoo.training.logdir`.
        run_config: the effective config of a ``segzoo train`` run (normalised: its stages expanded),
            stored in full checkpoints with a description of the other settings; resuming compares
            both (:mod:`segzoo.training.run_settings`).
    """

    num_epochs: int = 1
    main_metric: str = "loss"
    minimize_metric: bool = True
    verbose: bool = False
    resume: str | os.PathLike | None = None
    valid_loader: str = "valid"
    seed: int | None = None
    amp: bool | str | None = None
    precision: str = "auto"
    channels_last: bool | str | None = None
    compile: bool | str | dict = False
    normalization: Mapping[str, list[float]] | None = None
    nonfinite: str = "raise"
    checkpoint_data: Mapping[str, Any] | None = None
    check: bool = False
    timeit: bool = False
    overwrite_logdir: bool = False
    run_config: Mapping[str, Any] | None = None

    @classmethod
    def from_keywords(cls, settings: TrainSettings | None = None, **keywords: Any) -> TrainSettings:
        """The settings of a ``train(..., settings=settings, **keywords)`` call.

        ``keywords`` are field names of this class, or the Catalyst 19.x ``fp16`` (mapped onto ``amp``)
        and ``monitoring_params`` (only ``None``). With ``settings`` given, a field may not be a keyword too.

        Raises:
            TypeError: an unknown keyword (with the closest field name), a field given both ways, or
                ``settings`` that is not a TrainSettings.
            ValueError: a Catalyst keyword that cannot be honoured (see :func:`~segzoo.training.catalyst_args.fp16_to_amp`).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in keywords:
            if key not in names and key not in CATALYST_KEYWORDS:
                close = difflib.get_close_matches(key, [*names, *CATALYST_KEYWORDS, "stages", "settings"], n=1)
                raise TypeError(f"train() got an unexpected keyword argument {key!r}"
                                + (f"; did you mean {close[0]!r}?" if close else ""))
        fp16, monitoring_params = keywords.pop("fp16", None), keywords.pop("monitoring_params", None)
        if settings is None:
            settings = cls(**keywords)
        elif not isinstance(settings, cls):
            raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}")
        elif keywords:
            raise TypeError(f"train() got {', '.join(sorted(keywords))} both as a keyword and in settings=; "
                            f"give each once (e.g. settings=dataclasses.replace(settings, {sorted(keywords)[0]}=...))")
        check_monitoring_params(monitoring_params)
        amp = fp16_to_amp(fp16, settings.amp, stacklevel=4)  # the warning points at the user's train() line
        return settings if amp is settings.amp else dataclasses.replace(settings, amp=amp)
