"""Are the differences real? 95% intervals for test accuracies (Wilson, per job; Student t, across seeds) and
exact McNemar tests between jobs evaluated on the same test images, Holm-corrected.

Reads each job's ``test_predictions.npz``, found through its ``artifacts/index.json`` by kind.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

from gnr650.interpret.index import PHASE_END, ArtifactKind, artifacts_dir, find_artifacts

from .collect import Job

log = logging.getLogger(__name__)
ALPHA = 0.05


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (better than the normal approximation near 0 and 1)."""
    if total == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact (binomial) two-sided McNemar p-value from the discordant counts: images only job A got right,
    images only job B got right. No discordant pair: p = 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(stats.binomtest(min(only_a, only_b), n, 0.5).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); a few lines, no new dependency."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean across seeds (None with fewer than two values)."""
    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem
    return mean - half, mean + half


@dataclass
class Predictions:
    job: Job
    labels: np.ndarray
    predicted: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels


def load_predictions(jobs: list[Job]) -> list[Predictions]:
    """The completed jobs that saved per-image test predictions (an unreadable file: skipped with a warning)."""
    loaded = []
    for job in jobs:
        paths = find_artifacts(artifacts_dir(job.dir), ArtifactKind.TEST_PREDICTIONS, phase=PHASE_END) if job.ok else []
        if not paths:
            continue
        try:
            with np.load(paths[-1], allow_pickle=False) as z:
                loaded.append(Predictions(job, z["labels"], z["predicted"]))
        except (OSError, KeyError, ValueError) as exc:
            log.warning("Skipping unreadable test predictions of %s: %s", job.dir, exc)
    return loaded


def accuracy_rows(predictions: list[Predictions]) -> list[dict]:
    """Per job: test accuracy and its 95% Wilson interval over the test images."""
    rows = []
    for p in predictions:
        correct, total = int(p.correct.sum()), len(p.labels)
        low, high = wilson_interval(correct, total)
        rows.append(
            {
                "label": p.job.label,
                "run_dir": str(p.job.dir),
                "correct": correct,
                "images": total,
                "acc": correct / total,
                "low": low,
                "high": high,
            }
        )
    return rows


def pairwise_rows(predictions: list[Predictions]) -> list[dict]:
    """Exact McNemar test for every pair of jobs with the same test labels (the same images), Holm-corrected."""
    rows = []
    for a, b in itertools.combinations(predictions, 2):
        if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
            continue
        only_a, only_b = int((a.correct & ~b.correct).sum()), int((~a.correct & b.correct).sum())
        rows.append(
            {"a": a.job.label, "b": b.job.label, "only_a": only_a, "only_b": only_b, "p": mcnemar_exact(only_a, only_b)}
        )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < ALPHA
    return rows
