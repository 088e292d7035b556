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
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gnr650.data import SPLITS
from gnr650.summary.collect import Job, collect_jobs
from gnr650.summary.writer import write_summary

log = logging.getLogger(__name__)


def job_line(job: Job) -> str:
    """One console line per job: its number, label, status, and its accuracies and warnings (or its error)."""
    accuracies = ", ".join(
        f"{split} {value:.2%}" for split in SPLITS if (value := job.metric(f"{split}/acc")) is not None
    )
    detail = accuracies + "".join(f"; warning: {w}" for w in job.warnings) if job.ok else job.error
    return f"Job {job.num} ({job.label or 'no overrides'}) {job.status}" + (f": {detail}" if detail else "")


class SummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        start = time.perf_counter()
        try:  # announced: tables, figures and the report take a while (about 20 s for 12 jobs on a 2-core CPU)
            log.info("Writing the summary of %d jobs to %s ...", len(collect_jobs(sweep_dir)), sweep_dir)
            summary = write_summary(sweep_dir)
        except Exception:  # the sweep's results are on disk: a summary bug must not fail the sweep
            log.exception("Could not summarise %s; retry with `gnr650-summarize %s`", sweep_dir, sweep_dir)
            return
        log.info(
            "Summary of %d jobs written in %.1f s: %s",
            len(summary.jobs),
            time.perf_counter() - start,
            sweep_dir / "report.html",
        )
        for job in summary.jobs:
            (log.info if job.ok and not job.warnings else log.warning)("%s", job_line(job))
