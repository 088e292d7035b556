"""Checks that fail before any work, with a message naming the setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from gnr650.errors import UserError
from gnr650.files import ensure_writable


class PreflightError(ValueError, UserError):
    """The configuration or the environment cannot work; the message says which setting to change."""


def check_writable(directory: str | Path) -> None:
    """The output directory exists (or can be made) and takes files."""
    try:
        ensure_writable(directory)
    except OSError as e:
        raise PreflightError(
            f"Output directory '{directory}' is not writable ({e.strerror or e}). Point hydra.run.dir "
            "(hydra.sweep.dir for sweeps) or paths.log_dir at a writable folder."
        ) from e


def check_launch(trainer: pl.Trainer) -> None:
    """Lightning's DDP launcher re-runs the command line once per extra rank; inside a local sweep each
    rank would run the whole sweep."""
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    if (
        isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise PreflightError(
            "trainer=ddp with processes started by Lightning cannot run inside a local multirun (-m): Lightning "
            "starts each rank by re-running the command line, sweep included. Run the jobs one at a time, or "
            "sweep on a cluster with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>."
        )
