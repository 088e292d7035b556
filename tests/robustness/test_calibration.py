"""Calibration numbers against hand computations and exact invariants."""

from __future__ import annotations

import math

import pytest
import torch

from gnr650.robustness.calibration import ECE_BINS, calibration, fit_temperature, reliability_bins


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_a_perfectly_calibrated_predictor_has_zero_ece():
    # 10 images at confidence 0.8 with 8 right, 4 at 0.5 (two classes) with 2 right: accuracy = confidence per bin.
    probs = [[0.8, 0.2]] * 10 + [[0.5, 0.5]] * 4
    labels = torch.tensor([0] * 8 + [1] * 2 + [0, 0, 1, 1])
    assert calibration(_logits(probs), labels)["ece"] == pytest.approx(0.0, abs=1e-6)


def test_ece_nll_and_brier_match_a_hand_computation():
    probs = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    labels = torch.tensor([0, 1, 0, 1])
    got = calibration(_logits(probs), labels)
    # Bins: 0.9 (two images, one right: |0.5 - 0.9| = 0.4), 0.6 (right: 0.4), 0.7 (right: 0.3).
    assert got["ece"] == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4, abs=1e-6)
    assert got["acc"] == 0.75
    assert got["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.7)) / 4)
    brier = [(0.1**2 + 0.1**2), (0.9**2 + 0.9**2), (0.4**2 + 0.4**2), (0.3**2 + 0.3**2)]
    assert got["brier"] == pytest.approx(sum(brier) / 4)
    bins = reliability_bins(_logits(probs), labels)
    assert len(bins["count"]) == ECE_BINS and sum(bins["count"]) == 4
    filled = [(n, c, a) for n, c, a in zip(bins["count"], bins["confidence"], bins["accuracy"]) if n]
    assert filled == [(1, pytest.approx(0.6), 1.0), (1, pytest.approx(0.7), 1.0), (2, pytest.approx(0.9), 0.5)]
    ece_from_bins = sum(n * abs(a - c) for n, c, a in filled) / 4
    assert ece_from_bins == pytest.approx(got["ece"], abs=1e-6)


def test_temperature_scaling_recovers_the_temperature_and_keeps_accuracy():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).flatten()  # calibrated at T = 1
    overconfident = true_logits * 2.5
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    before, after = calibration(overconfident, labels), calibration(overconfident, labels, t)
    assert after["acc"] == before["acc"] and after["nll"] < before["nll"] and after["ece"] < before["ece"]


def test_temperature_is_fitted_under_inference_mode_as_in_the_test_loop():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.tensor([0, 1, 1])
    with torch.inference_mode():
        inside = fit_temperature(logits, labels)
    assert inside == fit_temperature(logits, labels) and inside > 1  # one of three wrong at confidence 0.88


def test_bins_are_torchmetrics_bins_edges_included_and_empty_ones_are_none():
    # Two classes; top-1 confidences 0.6 and 0.8 lie exactly on edges (9/15, 12/15): each opens its bin; 0.95 and a
    # confidence of exactly 1 share the last one.
    probs = [[0.6, 0.4], [0.8, 0.2], [0.8, 0.2], [0.95, 0.05], [1.0, 0.0]]
    labels = torch.tensor([0, 0, 1, 0, 0])
    bins = reliability_bins(_logits(probs), labels)
    assert bins["edges"] == pytest.approx([i / ECE_BINS for i in range(ECE_BINS + 1)])
    assert bins["count"] == [0] * 9 + [1, 0, 0, 2, 0, 2]
    assert bins["accuracy"][9] == 1.0 and bins["accuracy"][12] == 0.5 and bins["accuracy"][14] == 1.0
    assert bins["confidence"][14] == pytest.approx(0.975)
    filled = (9, 12, 14)
    assert all(bins[key][i] is None for key in ("accuracy", "confidence") for i in range(ECE_BINS) if i not in filled)
    ece = sum(n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n) / 5
    assert ece == pytest.approx(calibration(_logits(probs), labels)["ece"], abs=1e-6)


def test_a_temperature_divides_the_logits_in_every_measure():
    gen = torch.Generator().manual_seed(1)
    logits, labels = (
        torch.randn(200, 4, generator=gen, dtype=torch.float64) * 3,
        torch.randint(0, 4, (200,), generator=gen),
    )
    assert calibration(logits, labels, 2.0) == calibration(logits / 2.0, labels)
    assert reliability_bins(logits, labels, 2.0) == reliability_bins(logits / 2.0, labels)


def test_brier_counts_every_class_when_the_last_one_is_absent():
    probs = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]  # no image of class 2
    got = calibration(_logits(probs), torch.tensor([0, 1]))["brier"]
    assert got == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.3**2 + 0.4**2 + 0.1**2)) / 2)


@pytest.mark.parametrize("true_t", [0.05, 20.0])
def test_temperature_scaling_recovers_far_temperatures(true_t):
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).flatten()
    assert fit_temperature(true_logits * true_t, labels) == pytest.approx(true_t, rel=0.05)
