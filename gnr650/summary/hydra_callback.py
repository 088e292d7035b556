"""Hydra callback writing the multirun summary when a sweep ends.

Enable it in the Hydra config:

    hydra:
      callbacks:
        summary:
          _target_: gnr650.summary.hydra_callback.SummaryCallback

Hydra calls `on_multirun_end` only when the sweeper returns, and its sweepers raise as
soon as a job has raised: so in multirun mode train.py writes a failed results.json and
returns None instead of raising (Optuna then records the trial as failed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gnr650.summary.writer import write_summary

log = logging.getLogger(__name__)


class SummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = write_summary(sweep_dir)
        except Exception:  # the sweep's results are on disk: a summary bug must not fail the sweep
            log.exception("Could not summarise %s; retry with `gnr650-summarize %s`", sweep_dir, sweep_dir)
            return
        log.info("Summary of %d jobs: %s", len(summary.jobs), sweep_dir / "report.html")
        for job in summary.failed:
            log.warning("Job %s (%s) %s: %s", job.num, job.label, job.status, job.error)
