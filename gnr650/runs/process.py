"""What an entry point sets up once per process: Hydra resolvers, the config schemas and the filters for warnings
and console messages that are by design (each with the reason), so that what the console shows is something the
user can act on."""

from __future__ import annotations

import logging
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
    # CSVLogger writes metrics.csv into the run directory (beside .hydra/ and the log) and replaces only that file;
    # a resumed run keeps its earlier rows (gnr650.runs.csv_history).
    ".*Previous log files in this directory will be deleted.*",
    # Metrics are logged once per epoch (ClassificationModule), so log_every_n_steps does not apply.
    ".*is smaller than the logging interval Trainer\\(log_every_n_steps.*",
    # Lightning's own call of a deprecated torch API; nothing the user can change.
    ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
)

# Lightning console messages (logger name -> message starts) that are not for this framework's user, with why.
INTENTIONAL_LOG_MESSAGES = {
    # Advertising for Lightning's cloud products ("💡 Tip: ... try installing litlogger / litmodels"); accelerators
    # this framework does not run on; and a note on how Lightning counts the scheduler's steps.
    "pytorch_lightning.utilities.rank_zero": (
        "💡 Tip:",
        "TPU available:",
        "HPU available:",
        "Loading `train_dataloader` to estimate number of stepping batches.",
    ),
    # last.ckpt is a full checkpoint on purpose (resume); Lightning notes the default it took when saving it.
    "pytorch_lightning.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
}


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


_LOG_FILTERS = {name: _DropMessages(starts) for name, starts in INTENTIONAL_LOG_MESSAGES.items()}


def prepare_process() -> None:
    """Called by train.py, eval.py, the console scripts and the tests' conftest, before any config is composed."""
    register_resolvers()
    register_schemas()
    for message in INTENTIONAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)  # a no-op when already added
