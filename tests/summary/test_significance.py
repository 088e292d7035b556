"""Which strategy pairs are called significant: Holm's adjusted p-value decides, never the raw one."""

from __future__ import annotations

from math import comb
from types import SimpleNamespace

import numpy as np

from gnr650.summary import significance as sig


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
