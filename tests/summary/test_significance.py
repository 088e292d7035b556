"""Which strategy pairs are called significant: Holm's adjusted p-value decides, never the raw one."""

from __future__ import annotations

import logging
import math
import statistics
from math import comb
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from gnr650.interpret.index import append_to_index, entry
from gnr650.summary import collect_jobs
from gnr650.summary import significance as sig
from tests.summary.jobs import make_job


def _binomial_two_sided(k: int, n: int) -> float:
    """Exact McNemar p by hand: 2 * P(X <= min), X ~ Binomial(n, 1/2), capped at 1."""
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def _job(label: str, correct: list[bool]) -> sig.Predictions:
    labels = np.zeros(len(correct), dtype=np.int64)
    predicted = np.where(correct, 0, 1)
    return sig.Predictions(SimpleNamespace(label=label), labels, predicted)


def _correct(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


def test_a_pair_significant_before_but_not_after_holm_is_not_marked():
    # 40 images, all right on 0-29. a: also 30-37 (8 only a vs b); b: also 38; c: also 30-33 and 38.
    # Raw p: a-b 2*10/512 = 0.039 (< 0.05), a-c 2*6/32 = 0.375, b-c 2/16 = 0.125.
    # Holm over 3 pairs: a-b 3 * 0.039 = 0.117, so no pair is significant.
    base = set(range(30))
    jobs = [
        _job("a", _correct(40, base | set(range(30, 38)))),
        _job("b", _correct(40, base | {38})),
        _job("c", _correct(40, base | {30, 31, 32, 33, 38})),
    ]
    rows = {(r["a"], r["b"]): r for r in sig.pairwise_rows(jobs)}
    expected_raw = {("a", "b"): _binomial_two_sided(1, 9), ("a", "c"): _binomial_two_sided(1, 5)}
    expected_raw[("b", "c")] = _binomial_two_sided(0, 4)
    for pair, p in expected_raw.items():
        assert abs(rows[pair]["p"] - p) < 1e-12
    assert rows[("a", "b")]["p"] < sig.ALPHA  # the raw test alone would call it
    ranked = sorted(expected_raw.values())
    holm_by_hand = [3 * ranked[0], max(3 * ranked[0], 2 * ranked[1]), max(3 * ranked[0], 2 * ranked[1], ranked[2])]
    assert abs(rows[("a", "b")]["p_holm"] - holm_by_hand[0]) < 1e-12
    assert not any(row["significant"] for row in rows.values())


def test_a_pair_that_survives_holm_is_marked_and_only_that_one():
    # a-b: 10 vs 0 discordant (p = 2/1024, Holm x3 = 0.0059); b-c: 0 vs 6 (p = 2/64 = 0.031, raw < 0.05 but
    # Holm x2 = 0.0625); a-c: 5 vs 1 (p = 0.1875).
    base = set(range(20))
    jobs = [
        _job("a", _correct(40, base | set(range(20, 30)))),
        _job("b", _correct(40, base)),
        _job("c", _correct(40, base | {20, 21, 22, 23, 24, 30})),
    ]
    rows = {(r["a"], r["b"]): r for r in sig.pairwise_rows(jobs)}
    assert abs(rows[("a", "b")]["p_holm"] - 3 * _binomial_two_sided(0, 10)) < 1e-12
    assert rows[("b", "c")]["p"] < sig.ALPHA
    assert [pair for pair, row in rows.items() if row["significant"]] == [("a", "b")]


def test_wilson_interval_edge_counts_and_holm_cap():
    assert all(math.isnan(bound) for bound in sig.wilson_interval(0, 0))  # no image: no interval, not an error
    z = stats.norm.ppf(0.975)  # 1 of 1 by the closed form: centre (1 + z²/2)/(1 + z²), half (z²/2)/(1 + z²)
    centre, half = (1 + z * z / 2) / (1 + z * z), (z * z / 2) / (1 + z * z)
    assert sig.wilson_interval(1, 1) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert sig.holm([0.6, 0.7]) == [1.0, 1.0]  # 2 x 0.6 = 1.2: adjusted p-values are probabilities: capped at 1


def test_t_interval_of_two_seeds_equals_scipy():
    low, high = sig.t_interval([0.7, 0.9])
    expected = stats.t.interval(0.95, 1, loc=0.8, scale=statistics.stdev([0.7, 0.9]) / math.sqrt(2))
    assert (low, high) == pytest.approx(expected, abs=1e-12)


def _save_predictions(job: Path, labels, predicted, *, phase: str = "end", name: str = "test_predictions.npz"):
    artifacts = job / "artifacts"
    artifacts.mkdir(exist_ok=True)
    np.savez(artifacts / name, labels=np.asarray(labels), predicted=np.asarray(predicted))
    append_to_index(artifacts, [entry("test_predictions", name, phase=phase, epoch=1)])


def test_predictions_loaded_from_completed_jobs_at_the_end_only(tmp_path, caplog):
    labels = [0, 1, 1, 0]
    make_job(tmp_path, 0, ["finetune=last"])  # completed, but saved no predictions
    _save_predictions(make_job(tmp_path, 1, ["finetune=top4"]), labels, [0, 1, 0, 0])
    later = make_job(tmp_path, 2, ["finetune=full"])
    _save_predictions(later, labels, [0, 1, 1, 0])
    _save_predictions(later, labels, [1, 0, 0, 1], phase="start", name="start_predictions.npz")  # not the result
    failed = make_job(tmp_path, 3, ["finetune=frozen"], status="failed", error="boom")
    _save_predictions(failed, labels, [0, 0, 0, 0])
    broken = make_job(tmp_path, 4, ["finetune=lora"])
    (broken / "artifacts").mkdir(exist_ok=True)
    np.savez(broken / "artifacts" / "test_predictions.npz", labels=np.array([object()]), predicted=np.array([0]))
    append_to_index(broken / "artifacts", [entry("test_predictions", "test_predictions.npz", phase="end", epoch=1)])

    with caplog.at_level(logging.WARNING):
        loaded = sig.load_predictions(collect_jobs(tmp_path))
    assert [p.job.dir.name for p in loaded] == ["1", "2"]
    assert [int(p.correct.sum()) for p in loaded] == [3, 4]  # job 2: its end predictions, not the start ones
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("Skipping unreadable test predictions of ") and str(broken) in warning
    assert "pickle" in warning  # the reason: object arrays are refused, never unpickled

    rows = sig.accuracy_rows(loaded)
    assert [(r["correct"], r["images"], r["acc"]) for r in rows] == [(3, 4, 0.75), (4, 4, 1.0)]


def test_only_jobs_tested_on_the_same_images_are_compared():
    right = [True, True, False, False]
    a = sig.Predictions(SimpleNamespace(label="a"), np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0]))
    b = sig.Predictions(SimpleNamespace(label="b"), np.array([1, 1, 0, 0]), np.where(right, [1, 1, 0, 0], 2))
    c = sig.Predictions(SimpleNamespace(label="c"), np.array([0, 1, 0, 1]), np.array([0, 0, 0, 1]))
    assert [(r["a"], r["b"]) for r in sig.pairwise_rows([a, b, c])] == [("a", "c")]
