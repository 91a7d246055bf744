"""RunnerState: fields grouped by lifetime, each still an attribute of the state; one owner of "best"."""

import pytest
from _helpers import train

from segzoo.training import RunnerState
from segzoo.training.callbacks import CheckpointCallback
from segzoo.training.state import FIELD_GROUP, GROUPS, BestTracker


def test_flat_names_read_and_write_their_group():
    state = RunnerState(stage="s", epoch=3, loader_name="valid", channels_last=True)
    assert (state.stage_info.stage, state.epoch_info.epoch, state.loader_info.loader_name) == ("s", 3, "valid")
    assert state.run_info.channels_last is True
    state.loss = {"loss": 1.0}
    assert state.batch_info.loss == {"loss": 1.0}
    state.epoch_info.global_epoch = 7
    assert state.global_epoch == 7
    # every name DESIGN.md lists, and no name in two groups
    assert {"loader_name", "input", "output", "loss", "main_metric", "minimize_metric", "need_backward", "epoch",
            "stage", "logdir", "model", "optimizer", "amp_dtype", "channels_last", "callbacks"} <= set(FIELD_GROUP)
    assert len(FIELD_GROUP) == sum(len(cls.__dataclass_fields__) for cls in GROUPS.values())
    with pytest.raises(TypeError, match="no field 'samples'"):
        RunnerState(samples=None)


def test_best_tracker_is_strict_and_directional():
    best = BestTracker(minimize_metric=False)
    assert best.update(0.5, "train.1") and not best.update(0.5, "train.2") and not best.update(0.4, "train.3")
    assert (best.best_valid_metric, best.best_name, best.is_best_valid) == (0.5, "train.1", False)
    assert best.update(0.6, "train.4") and best.best_name == "train.4"


def test_run_state_after_training(tiny, loaders, tmp_path):
    state = train(tiny, loaders, tmp_path, num_epochs=2, channels_last=True)
    assert state.channels_last and state.best_name in ("train.1", "train.2")
    savers = [c for c in state.callbacks if isinstance(c, CheckpointCallback)]
    assert len(savers) == 1 and not hasattr(savers[0], "callbacks")  # the state carries the callbacks
    assert state.metrics.is_best is state.is_best_valid and state.metrics.best_main_metric_value == state.best_valid_metric
