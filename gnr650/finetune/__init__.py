"""Fine-tuning strategies as module or parameter names, applied in one place (plus LoRA adapters, VPT prompts and
layer-wise lr decay), and the frozen-prefix feature cache."""

from gnr650.finetune.feature_cache import feature_cache
from gnr650.finetune.prepare import Strategy, prepare_from_config, prepare_strategy
from gnr650.finetune.strategies import StrategyError, count_params, trainable_modules

__all__ = [
    "Strategy",
    "StrategyError",
    "count_params",
    "feature_cache",
    "prepare_from_config",
    "prepare_strategy",
    "trainable_modules",
]
