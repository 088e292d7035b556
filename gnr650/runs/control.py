"""What every run gets whatever its callbacks group holds: exact resume, kept logs, a stop at a NaN loss and
``last.ckpt``, plus the context that ``trainer.fit`` runs in (safe checkpoint reading, SIGTERM reported)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from gnr650.runs.checkpoints import check_checkpoint, refusing_pickled_code
from gnr650.runs.csv_history import CSVHistory
from gnr650.runs.last_checkpoint import LastCheckpoint, reporting_sigterm
from gnr650.runs.resume import LAST, checkpoint_to_resume
from gnr650.runs.run_state import RunState
from gnr650.training.divergence import DivergenceGuard


@dataclass
class RunControl:
    """The run machinery's callbacks (add them after the configured ones) and the checkpoint fit continues from."""

    callbacks: list[pl.Callback]
    ckpt_path: str | None
    last: Path
    continue_with: str  # the command that continues the run when a signal stops it

    @contextmanager
    def fitting(self) -> Iterator[None]:
        """Around ``trainer.fit``: the resume checkpoint is checked first and read without pickled code."""
        if self.ckpt_path:
            check_checkpoint(self.ckpt_path)
        stopped = reporting_sigterm(self.last, self.continue_with)
        with refusing_pickled_code(self.ckpt_path), stopped, warnings.catch_warnings():
            if self.ckpt_path:  # resuming: the run's own checkpoints are expected in its checkpoint folder
                warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            yield

    @staticmethod
    def reading(path: str | None):
        """Around ``trainer.test`` from a checkpoint: read without pickled code, errors naming the file."""
        return refusing_pickled_code(path)


def run_control(
    checkpoint_dir: Path,
    overrides: list[str],
    loggers: list[Any],
    resume: Any,
    skip_done: bool,
    ckpt_path: str | None,
    last_ckpt_every_s: float,
    checkpointing: bool,
    continue_with: str,
) -> RunControl:
    """``checkpointing=False`` (the trainer's ``enable_checkpointing``): no ``last.ckpt``, which Lightning would
    refuse. ``continue_with``: the command that continues the run (``gnr650.runs.resume.continue_command``)."""
    ckpt, same_run = checkpoint_to_resume(checkpoint_dir, ckpt_path, resume, skip_done)
    last = checkpoint_dir / LAST
    callbacks: list[pl.Callback] = [
        RunState(overrides, check_overrides=same_run),
        CSVHistory(loggers),
        DivergenceGuard(),
    ]
    if checkpointing:
        callbacks.append(LastCheckpoint(last, continue_with, every_s=last_ckpt_every_s))
    return RunControl(callbacks, ckpt, last, continue_with)
