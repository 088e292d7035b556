"""What an entry point sets up once per process: Hydra resolvers, the config schemas and the filters for warnings
that are by design."""

from __future__ import annotations

import warnings

from gnr650.config import register_schemas
from gnr650.runs.resume import register_resolvers

# Lightning warnings about choices made on purpose, with the reason each is expected here.
INTENTIONAL_WARNINGS = (
    # Batches are preprocessed by the module (normalisation depends on the model's weights).
    ".*overridden `on_after_batch_transfer` in `LightningModule`.*",
    # Frozen modules are in eval mode at the start of training (gnr650.finetune.strategies.set_mode).
    ".*module\\(s\\) in eval mode at the start of training.*",
    # RunState makes the train loader resumable mid-epoch (the sampler skips what was trained on).
    ".*resuming from a checkpoint that ended before the epoch ended.*",
)


def prepare_process() -> None:
    """Called by train.py, eval.py, the console scripts and the tests' conftest, before any config is composed."""
    register_resolvers()
    register_schemas()
    for message in INTENTIONAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
