"""A resumed run keeps the metrics.csv rows of the epochs before its checkpoint.

Lightning's CSVLogger deletes an existing metrics.csv when it opens its log folder, so a resumed
run would lose the curves of everything trained before the kill. The rows are read before the
logger opens the file and put back in front of the new ones, minus any logged after the
checkpoint (the resumed run logs those again).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger


class CSVHistory(pl.Callback):
    """Give it the run's loggers before ``fit``: Lightning opens the loggers' folders before any callback hook."""

    def __init__(self, loggers: list):
        self._rows: dict[int, list[dict[str, str]]] = {}
        for i, logger in enumerate(loggers):
            path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
            if path is not None and path.is_file():
                with path.open(newline="") as f:
                    self._rows[i] = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path and trainer.is_global_zero:
            for i, rows in self._rows.items():
                kept = [r for r in rows if "step" in r and float(r["step"]) < trainer.global_step]
                trainer.loggers[i].experiment.metrics[:0] = kept
        self._rows = {}
