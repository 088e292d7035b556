"""A run stopped by an expected error (or Ctrl-C) before it wrote anything leaves no run directory: Hydra makes one
before the task starts, so each typo would otherwise leave one behind (README, "When a run or a sweep dies")."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from gnr650.errors import user_error


def hydra_files(directory: Path) -> set[str]:
    """What Hydra wrote into the job's output ``directory`` before the task started: its config folder
    (``hydra.output_subdir``) and the log files its logging set-up opened there."""
    logs = {
        Path(h.baseFilename).name
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == directory.absolute()
    }
    return logs | ({HydraConfig.get().output_subdir} - {None})


def _holds_only(directory: Path, names: set[str]) -> bool:
    return directory.is_dir() and all(p.name in names for p in directory.iterdir())


@contextmanager
def removed_when_unused(directory: Path, made_by_hydra: set[str], top: Path | None = None) -> Iterator[None]:
    """Around a single run's task: when a UserError or Ctrl-C stops it and ``directory`` holds nothing but
    ``made_by_hydra``, results.json and its report.html, ``directory`` is removed, then its parents up to ``top``
    that this leaves empty. A directory that held more when the task began (a resumed run's) is kept, as is any
    other failure's (a bug's: its log is evidence)."""
    fresh = _holds_only(directory, made_by_hydra)
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        expected = isinstance(e, KeyboardInterrupt) or user_error(e) is not None
        if fresh and expected and _holds_only(directory, made_by_hydra | {"results.json", "report.html"}):
            shutil.rmtree(directory, ignore_errors=True)
            parent = directory.parent
            while top is not None and parent.is_relative_to(top) and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        raise
