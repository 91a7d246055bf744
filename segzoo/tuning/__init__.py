"""``segzoo tune``: an Optuna study over config keys (:mod:`segzoo.tuning.space`, :mod:`segzoo.tuning.study`,
:mod:`segzoo.tuning.report`). Needs the ``tune`` extra (optuna, matplotlib), imported when a study runs."""

from segzoo.tuning.space import Param, SearchSpace, check_space_keys, read_space
from segzoo.tuning.study import default_storage, run_study, trial_dir

__all__ = ["Param", "SearchSpace", "read_space", "check_space_keys", "run_study", "default_storage", "trial_dir"]
