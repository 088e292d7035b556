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
