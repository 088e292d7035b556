"""Protocols over many runs of one strategy: ``protocol=tuned`` (learning rate chosen on val, then seeds)."""

from gnr650.tuning.protocol import SEARCH_SPLITS, TuningError, choose, seed_config, trial_config, tuned_train

__all__ = ["SEARCH_SPLITS", "TuningError", "choose", "seed_config", "trial_config", "tuned_train"]
