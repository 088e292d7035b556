"""``history.csv``: a run's learning curves, one row per epoch, reduced from the CSV logger's metrics.csv.

Lightning's metrics.csv is sparse: an epoch's training and validation values sit on separate rows, and the
learning-rate monitor's rows carry a step but no epoch. ``history.csv`` has one row per epoch with every value
of that epoch: ``epoch`` counted from 1 (completed epochs, as the console's epoch lines and the figures'
``end (epoch N)`` labels count them), ``step`` (optimizer steps completed by the epoch's end, as checkpoints
count them; metrics.csv logs the epoch's last step, one less), then the metrics (``train/loss``, ``train/acc``,
``val/loss``, ``val/acc``, ..., ``lr-*``). It is derived from the final metrics.csv, which a resumed run keeps
whole (``CSVHistory``), so a resumed run's history is the uninterrupted run's. Without a CSV logger
(``logger=none``) no per-epoch values are kept, so there is no history.
"""

from __future__ import annotations

import csv
import logging
import math
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gnr650.files import atomic_write

log = logging.getLogger(__name__)

HISTORY_NAME = "history.csv"
METRICS_NAME = "metrics.csv"
# The final evaluation's values (ClassificationModule logs them after fit as ``final/<split>/<metric>``): not
# an epoch's.
FINAL_PREFIX = "final/"


def epoch_history(rows: Iterable[dict[str, str]]) -> list[dict[str, float]]:
    """One dict per epoch, in epoch order, from metrics.csv rows (``csv.DictReader``'s, blanks allowed).

    A row with an ``epoch`` belongs to that epoch; one without (the learning-rate monitor's) to the epoch its
    step falls in, the first whose last logged step is not before it. A value logged several times in one
    epoch (per-step logging, several validations) is their mean, as Lightning reduces ``on_epoch`` values.
    """
    rows = [{k: v for k, v in row.items() if k and not k.startswith(FINAL_PREFIX)} for row in rows]
    rows = [{k: value for k, raw in row.items() if (value := _number(raw)) is not None} for row in rows]
    last_step: dict[int, float] = {}
    for row in rows:
        if "epoch" in row and row.keys() - {"epoch", "step"}:  # not a row of final/ values alone
            epoch = int(row["epoch"])
            last_step[epoch] = max(last_step.get(epoch, -1.0), row.get("step", -1.0))
    epochs = sorted(last_step)
    ends = [last_step[e] for e in epochs]
    values: dict[int, dict[str, list[float]]] = {e: {} for e in epochs}
    for row in rows:
        if "epoch" in row:
            epoch = int(row["epoch"])
        elif "step" in row and bisect_left(ends, row["step"]) < len(epochs):
            epoch = epochs[bisect_left(ends, row["step"])]
        else:
            continue
        if epoch not in values:
            continue
        for name, value in row.items():
            if name not in ("epoch", "step"):
                values[epoch].setdefault(name, []).append(value)
    return [
        {
            "epoch": e + 1,
            "step": int(last_step[e]) + 1,
            **{k: sum(v) / len(v) for k, v in sorted(values[e].items())},
        }
        for e in epochs
    ]


def _number(raw: Any) -> float | None:
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def metrics_csv(run_dir: str | Path) -> Path | None:
    """The run's metrics.csv: in the run directory, else where a CSVLogger's default layout nests it
    (``<name>/version_<n>/``)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_NAME
    return path if path.is_file() else next(run_dir.rglob(METRICS_NAME), None)


def write_history(run_dir: str | Path, loggers: list[Any]) -> list[dict[str, float]] | None:
    """Write ``<run_dir>/history.csv`` (atomically) from the first CSV logger's finished metrics.csv and return
    its rows; None, and nothing written, without a CSV logger or without any epoch."""
    from pytorch_lightning.loggers import CSVLogger

    logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    path = Path(logger.log_dir) / METRICS_NAME if logger is not None else None
    if path is None or not path.is_file():
        log.info("No %s: no CSV logger kept per-epoch metrics (logger=csv keeps them).", HISTORY_NAME)
        return None
    history = epoch_history(_read_rows(path))
    if not history:
        return None
    columns = list(dict.fromkeys(k for row in history for k in row))

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(Path(run_dir) / HISTORY_NAME, _write)
    return history


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """A run's per-epoch history: its history.csv, else (runs older than it) the reduction of its metrics.csv;
    empty when it has neither or they cannot be read."""
    path = Path(run_dir) / HISTORY_NAME
    source = path if path.is_file() else metrics_csv(run_dir)
    if source is None:
        return []
    try:
        rows = _read_rows(source)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("Skipping unreadable %s: %s", source, exc)
        return []
    if source == path:
        return [
            {k: int(v) if k in ("epoch", "step") else v for k, raw in row.items() if (v := _number(raw)) is not None}
            for row in rows
        ]
    return epoch_history(rows)
