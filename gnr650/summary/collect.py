"""Find the jobs of a multirun and read what each left behind.

Only the run directories are read (never Hydra's in-memory state), so a sweep
run elsewhere (Slurm, another machine) is summarised the same way.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gnr650.interpret.index import ArtifactKind, artifacts_dir, find_artifacts
from gnr650.runs.history import read_history

log = logging.getLogger(__name__)

COMPLETED, FAILED, UNFINISHED = "completed", "failed", "unfinished"


@dataclass
class Job:
    """One job of a multirun: where it ran, how it was configured, what it reported."""

    dir: Path
    num: int | None
    overrides: list[str]
    status: str
    error: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    swept: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED

    @property
    def warnings(self) -> list[str]:
        """What the run warned about when it finished (results.json ``warnings``: e.g. it did not learn)."""
        return [str(w) for w in self.results.get("warnings") or []]

    @property
    def lookup(self) -> bool:
        """A strategy that classifies by looking up its stored train set (kNN): its train accuracy is memorised."""
        finetune = (self.results.get("config") or {}).get("finetune") or {}
        return bool(finetune.get("knn"))

    def metric(self, name: str) -> float | None:
        """A metric from results.json, or None when missing or not a finite number."""
        value = (self.results.get("metrics") or {}).get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        return None


def collect_jobs(multirun_dir: str | Path) -> list[Job]:
    """Every job under `multirun_dir`, in job-number order, labelled by its swept overrides.

    A job is a directory holding `.hydra/overrides.yaml` or `results.json`; one without
    `results.json` is "unfinished" (killed, or still running). Runs inside a job's directory are parts of that job
    (protocol=tuned's trials and seeds), not jobs of their own.
    """
    root = Path(multirun_dir)
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in root.rglob("results.json")}
    dirs = {d for d in found if not any(parent in found for parent in d.parents)}
    jobs = sorted((_read_job(d) for d in dirs), key=_order)
    label_jobs(jobs)
    return jobs


def _order(job: Job) -> tuple:
    """By sweep directory, then job number (so 10 follows 9), then path."""
    return (str(job.dir.parent), job.num is None, job.num if job.num is not None else 0, str(job.dir))


def _read_job(job_dir: Path) -> Job:
    results, status, error = {}, UNFINISHED, "no results.json (job killed or still running)"
    path = job_dir / "results.json"
    if path.is_file():
        try:
            results = json.loads(path.read_text())
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
            status = results.get("status", FAILED)
            error = results.get("error")
        except (OSError, ValueError) as exc:
            results, status, error = {}, FAILED, f"unreadable results.json: {exc}"
    if status != COMPLETED and not error:
        error = f"status {status!r} without an error message"
    return Job(
        dir=job_dir,
        num=_job_num(job_dir),
        overrides=_overrides(job_dir, results),
        status=status,
        error=error.strip().splitlines()[0] if error and error.strip() else None,
        results=results,
    )


def _overrides(job_dir: Path, results: dict) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    return [str(o) for o in results.get("overrides", [])]


def _job_num(job_dir: Path) -> int | None:
    path = job_dir / ".hydra" / "hydra.yaml"
    if path.is_file():
        try:
            num = yaml.safe_load(path.read_text())["hydra"]["job"].get("num")
            if isinstance(num, int):
                return num
        except (yaml.YAMLError, KeyError, TypeError):
            pass
    return int(job_dir.name) if job_dir.name.isdigit() else None


def parse_override(override: str) -> tuple[str, str]:
    """`+finetune=top4` -> ("finetune", "top4"); `~key` -> ("key", "<deleted>")."""
    key, _, value = override.partition("=")
    if key.startswith("~"):
        return key.lstrip("~"), "<deleted>"
    return key.lstrip("+"), value


def label_jobs(jobs: list[Job]) -> None:
    """Set each job's `swept` overrides (those that differ between jobs) and its label."""
    parsed = [dict(parse_override(o) for o in job.overrides) for job in jobs]
    keys: list[str] = []
    for overrides in parsed:
        keys += [k for k in overrides if k not in keys and not k.startswith("hydra.")]
    swept = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    for job, overrides in zip(jobs, parsed):
        job.swept = {k: overrides.get(k, "") for k in swept}
        job.label = format_label(job.swept) or (
            ", ".join(job.overrides) or f"job {job.num if job.num is not None else job.dir.name}"
        )


def format_label(overrides: dict[str, str]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in overrides.items())


def _short(value: str) -> str:
    """Shorten long floats (Optuna's learning rates) so labels stay readable."""
    if any(c in value for c in ".eE"):
        try:
            return f"{float(value):.4g}"
        except ValueError:
            pass
    return value


def read_curves(job: Job) -> dict[str, dict[int, float]]:
    """The job's per-epoch series, {metric: {epoch: value}} with epochs counted from 1: its history.csv, else
    (jobs older than it) its metrics.csv reduced the same way (``gnr650.runs.history``)."""
    series: dict[str, dict[int, float]] = {}
    for row in read_history(job.dir):
        for name, value in row.items():
            if name not in ("epoch", "step"):
                series.setdefault(name, {})[int(row["epoch"])] = value
    return series


def _number(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_kernel_norms(job: Job) -> dict[str, list[dict[str, float | str]]]:
    """The job's indexed kernel-norm statistics as {phase: [{layer, mean, std, min, max}, ...]} in file order."""
    paths = find_artifacts(artifacts_dir(job.dir), ArtifactKind.KERNEL_NORM_STATS_CSV)
    if not paths:
        return {}
    path = paths[-1]  # the table holds every phase exported so far: the latest is the fullest
    phases: dict[str, list[dict[str, float | str]]] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                stats = {k: _number(row.get(k)) for k in ("mean", "std", "min", "max")}
                phases.setdefault(row["phase"], []).append({"layer": row["layer"], **stats})
    except (OSError, KeyError, csv.Error) as exc:
        log.warning("Skipping unreadable %s: %s", path, exc)
        return {}
    return phases
