"""The console: a transient progress bar for the running epoch and the final evaluation (rich's when installed, else
tqdm's) and one log line per finished epoch with its training and validation loss and accuracy (``EpochLog``). Log
records reach the console through the bar (``gnr650.console.ConsoleHandler``)."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar

log = logging.getLogger(__name__)


def epoch_progress_bar(evaluated: Sequence[str]) -> ProgressBar:
    """Lightning's bar for the running epoch and its validation, its epoch counted as ``EpochLog``'s lines count
    (Lightning's own counts from 0), and for the final evaluation of the splits ``evaluated`` (the test loop's
    dataloaders, in order), each named ("Evaluating val") where Lightning calls them all "Testing". The lasting
    record is the log lines."""
    if importlib.util.find_spec("rich") is not None:
        return _RichBar(evaluated)
    return _TQDMBar(evaluated)


def epoch_label(number: int, max_epochs: int | None) -> str:
    """ "Epoch 3/10": ``number`` counted from 1 (Lightning's ``current_epoch`` + 1), as the figures' labels count
    completed epochs (``gnr650.interpret.callbacks.weights_epoch``)."""
    return f"Epoch {number}" + (f"/{max_epochs}" if max_epochs and max_epochs > 0 else "")


def evaluation_label(split: str) -> str:
    """The final evaluation's bar label for ``split``: "Evaluating val"."""
    return f"Evaluating {split}"


class _RichBar(RichProgressBar):
    def __init__(self, evaluated: Sequence[str]) -> None:
        super().__init__()
        self.evaluated = list(evaluated)
        self._evaluating = 0  # the test loop's dataloader the bar counts now

    def _get_train_description(self, current_epoch: int) -> str:
        return epoch_label(current_epoch + 1, self.trainer.max_epochs)

    @property
    def test_description(self) -> str:
        return evaluation_label(self.evaluated[self._evaluating])

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluating = dataloader_idx
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)  # a new dataloader's bar


class _TQDMBar(TQDMProgressBar):
    def __init__(self, evaluated: Sequence[str]) -> None:
        super().__init__()
        self.evaluated = list(evaluated)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_label(trainer.current_epoch + 1, trainer.max_epochs))

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)  # resets it per dataloader
        if batch_idx == 0:
            self.test_progress_bar.set_description(evaluation_label(self.evaluated[dataloader_idx]))


class EpochLog(pl.Callback):
    """Logs one line per finished epoch (rank 0), "Epoch 3/10: train loss 0.4321 acc 85.20%, val loss ... (12.3 s)",
    and keeps each epoch's values in ``epochs`` (every rank), its ``epoch`` counted from 1 (``epoch_label``).

    Not the bar's postfix: the module logs once per epoch, its training metrics in its own ``on_train_epoch_end``,
    which Lightning calls after every callback's (the bar's too, which would show the previous epoch's values), and
    a bar is off in non-interactive runs and log files. So the line is written when the next epoch starts, or when
    training ends. The time is the epoch's training and validation.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self._started = 0.0
        self._validated = False
        self._pending: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)
        self._started = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The validation metrics are this epoch's only if validation ran in it (check_val_every_n_epoch).
        values = trainer.callback_metrics if self._validated else {}
        self._pending = {
            "epoch": trainer.current_epoch + 1,
            **{k: float(values[k]) for k in ("val/loss", "val/acc") if k in values},
            "seconds": time.perf_counter() - self._started,
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def _finish(self, trainer: pl.Trainer) -> None:
        """Complete the pending epoch with its training metrics, keep it and log its line."""
        if self._pending is None:
            return
        values = trainer.callback_metrics
        epoch = {**self._pending, **{k: float(values[k]) for k in ("train/loss", "train/acc") if k in values}}
        self._pending = None
        self.epochs.append(epoch)
        if trainer.is_global_zero:
            log.info(epoch_line(epoch, trainer.max_epochs))


def epoch_line(epoch: dict[str, Any], max_epochs: int | None) -> str:
    """``Epoch 3/10: train loss 0.4321 acc 85.20%, val loss 0.5123 acc 80.00% (12.3 s)``; a split without values
    (no validation that epoch) is left out."""
    splits = [
        f"{split} loss {epoch[f'{split}/loss']:.4g} acc {epoch[f'{split}/acc']:.2%}"
        for split in ("train", "val")
        if f"{split}/loss" in epoch and f"{split}/acc" in epoch
    ]
    seconds = epoch["seconds"]
    took = f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2g} s"  # a sub-second epoch is not "0.0 s"
    return f"{epoch_label(epoch['epoch'], max_epochs)}: {', '.join(splits)} ({took})"
