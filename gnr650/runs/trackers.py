"""Experiment trackers (the ``logger`` config group): instantiated only when their package is installed, with the
run's config as hyperparameters and its figures and results.json as artefacts."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from gnr650.errors import UserError
from gnr650.interpret.index import read_index

log = logging.getLogger(__name__)

# Logger class name -> (the package it needs, the optional extra that installs it).
OPTIONAL = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}


class TrackerNotInstalledError(ImportError, UserError):
    """A configured logger's package is missing; the message names the extra to install."""


def instantiate_loggers(node: DictConfig | None) -> list[Any]:
    """Every ``_target_`` entry of the ``logger`` node; a missing optional package is an error before any work."""
    entries = [item for item in (node or {}).values() if item is not None and "_target_" in item]
    for item in entries:
        package, extra = OPTIONAL.get(item._target_.rsplit(".", 1)[-1], (None, None))
        if package and importlib.util.find_spec(package) is None:
            raise TrackerNotInstalledError(
                f"{item._target_} needs the '{package}' package, which is not installed: "
                f'pip install -e ".[{extra}]" (or choose another logger, e.g. logger=csv).'
            )
    return [instantiate(item) for item in entries]


def run_files(output_dir: Path) -> list[Path]:
    """results.json and the figures listed in artifacts/index.json."""
    artifacts = output_dir / "artifacts"
    figures = [artifacts / e["path"] for e in read_index(artifacts) if e["path"].endswith(".png")]
    return [p for p in [output_dir / "results.json", *figures] if p.is_file()]


def log_run_files(loggers: list[Any], output_dir: Path) -> None:
    """Upload :func:`run_files` to the trackers that keep files (MLflow, W&B), under their path in the run dir."""
    files = run_files(output_dir)
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "MLFlowLogger":
            for path in files:
                folder = path.parent.relative_to(output_dir).as_posix()
                logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
        elif kind == "WandbLogger":
            for path in files:
                logger.experiment.save(str(path), base_path=str(output_dir), policy="now")
        else:
            continue
        log.info("%d files of %s logged to %s", len(files), output_dir, kind)
