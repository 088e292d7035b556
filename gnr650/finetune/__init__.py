"""Fine-tuning strategies as module names, applied in one place, and the frozen-prefix feature cache."""

from gnr650.finetune.feature_cache import feature_cache
from gnr650.finetune.strategies import StrategyError, count_params, trainable_modules

__all__ = ["StrategyError", "count_params", "feature_cache", "trainable_modules"]
