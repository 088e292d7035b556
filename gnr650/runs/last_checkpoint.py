"""``last.ckpt``, the checkpoint ``resume=true`` continues from: every ``every_s`` seconds at an epoch end,
after the final epoch, and on SIGINT / SIGTERM.

Written whatever the callbacks group holds, so a killed run always has an epoch to resume from. The
interval bounds what it costs: on study 1's 1.4 s CPU epochs, writing the 134 MB checkpoint (ResNet-18
plus AdamW state) every epoch made each epoch ~10 % slower; a SIGKILL loses at most ``every_s`` plus
one epoch of training.
On SIGINT or SIGTERM the run saves at the end of the current batch (a state Lightning resumes
mid-epoch) and stops with ``RunInterrupted`` (train.py: one line, exit 128 + signal); in an epoch's last batch it saves
after the epoch's validation, checkpoints and logs instead (a run resumed from its last batch
would skip them). Without this, Ctrl-C lands anywhere (even inside an optimizer step) and loses
the epoch in progress. With ``RunState`` the resumed run is the uninterrupted one. A second
Ctrl-C stops at once.

Under DDP the signal handlers stay Lightning's (SIGTERM stops every rank at a batch boundary): a
collective save could deadlock ranks that saw the signal a batch apart, so a DDP run resumes
from its last end-of-epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """Training was stopped by signal ``signum`` after saving a checkpoint: the one-line message says what was
    saved and the command that continues (``continue_with``, from ``gnr650.runs.resume.continue_command``)."""

    def __init__(self, signum: int, saved: str, continue_with: str):
        self.signum = signum
        super().__init__(f"Stopped by {signal.Signals(signum).name}; saved {saved}. Continue with: {continue_with}")


@contextmanager
def reporting_sigterm(checkpoint: str | Path, continue_with: str) -> Iterator[None]:
    """Lightning stops a DDP run on SIGTERM with a SystemExit that exits 0: make it a RunInterrupted."""
    try:
        yield
    except SIGTERMException:
        raise RunInterrupted(signal.SIGTERM, f"{checkpoint} (the last end-of-epoch one)", continue_with) from None


class LastCheckpoint(Checkpoint):
    """A ``Checkpoint`` so that Lightning runs it after ModelCheckpoint: at an epoch end, that epoch's
    checkpoints come first (and a configured ``save_last`` file is the same state: the checkpoint IO
    links it rather than writing it twice). ``every_s=0``: every epoch. ``continue_with``: the command that continues
    the run, for the message a signal stops it with.

    An epoch-end save goes to a hidden pending file that becomes ``last.ckpt`` at the next epoch's start
    (or the end of training, or an exception): Lightning logs the epoch's training metrics after every
    ``on_train_epoch_end`` hook, so a run killed between the two would resume after an epoch whose row
    metrics.csv never got. Killed there, the run resumes from the previous ``last.ckpt`` instead."""

    def __init__(
        self,
        path: str | Path,
        continue_with: str,
        every_s: float = 0.0,
        signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    ):
        if every_s < 0:
            raise ValueError(f"last_ckpt_every_s must be >= 0 (seconds between resume checkpoints), got {every_s}.")
        self.path = Path(path)
        self._pending = self.path.with_name(f".{self.path.name}.pending")
        self._unpublished = False  # this run's epoch-end save waits in the pending file (not a killed run's)
        self.every_s = every_s
        self.signals = signals
        self.continue_with = continue_with
        self._saved_at = 0.0  # time.monotonic() of the last save, or of the training start
        self.received: int | None = None
        self._stopped_at: str | None = None  # where the checkpoint before stopping was taken
        self.last_model_path = ""  # as ModelCheckpoint's, once written
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "Received %s: saving a checkpoint after this batch, then stopping (Ctrl-C again stops at once).",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _save(self, trainer: pl.Trainer, path: Path) -> None:
        trainer.save_checkpoint(path, weights_only=False)  # full state: what resume continues from
        self._saved_at = time.monotonic()
        self._unpublished = path == self._pending
        if path == self.path:
            self.last_model_path = str(self.path)
        if self.received is not None:
            self._restore()
            self._stopped_at = f"step {trainer.global_step}, epoch {trainer.current_epoch}"

    def _stop(self) -> None:
        raise RunInterrupted(self.received, f"{self.path} ({self._stopped_at})", self.continue_with)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received, self._stopped_at = None, None
        self._saved_at = time.monotonic()
        # After Lightning registered its own SIGTERM handler (fit set-up), so this one wins.
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.received is not None and self._stopped_at is None and batch_idx + 1 < trainer.num_training_batches:
            self._save(trainer, self.path)
            self._stop()

    def _publish(self, trainer: pl.Trainer) -> None:
        """This run's pending epoch-end checkpoint becomes ``last.ckpt`` (rank 0 wrote it, rank 0 renames it).
        A pending file a killed run left behind is never published: it is the state whose metrics row is lost."""
        if self._unpublished:
            if trainer.is_global_zero:
                os.replace(self._pending, self.path)
            self._unpublished = False
            self.last_model_path = str(self.path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a signal, the stop comes at the next epoch start: Lightning logs this epoch's metrics in between.
        due = self.received is not None or _final_epoch(trainer) or time.monotonic() - self._saved_at >= self.every_s
        if trainer.strategy.broadcast(due, src=0):  # every rank saves, or none (the save is collective)
            self._save(trainer, self._pending)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer)
        if self._stopped_at is not None:
            self._stop()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer)
        self._restore()
        if self._stopped_at is not None:  # the signal came in the last epoch: stop before the final evaluation
            self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._publish(trainer)
        self._restore()


def _final_epoch(trainer: pl.Trainer) -> bool:
    """Training stops after this epoch: its epoch or step limit is reached, or a callback asked it to stop."""
    epochs = trainer.fit_loop.epoch_progress.current.processed  # this epoch included
    return (
        trainer.should_stop
        or (trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epochs)
        or 0 <= trainer.max_steps <= trainer.global_step
    )
