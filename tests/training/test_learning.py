"""The did-it-learn rules: final train accuracy near chance, or a training loss that exploded."""

import math

import pytest

from gnr650.training.learning import LOSS_GROWTH, NEAR_CHANCE, learning_warnings

RATES = "optimizer.lr_head=10, optimizer.lr_backbone=10"


@pytest.mark.parametrize("num_classes", [2, 4, 10, 100])
def test_train_accuracy_within_five_points_of_chance_is_flagged_and_above_is_not(num_classes):
    chance = 1 / num_classes
    losses = [math.log(num_classes)] * 2  # the loss of guessing, not grown
    (warning,) = learning_warnings(chance + NEAR_CHANCE, losses, num_classes, RATES)
    assert warning.startswith(f"Did not learn: final train accuracy {chance + NEAR_CHANCE:.2%} is within 5 points")
    assert f"({RATES}), too low or too high, or too few epochs" in warning
    assert learning_warnings(chance / 2, losses, num_classes, RATES)  # below chance too
    assert learning_warnings(chance + NEAR_CHANCE + 0.001, losses, num_classes, RATES) == []


def test_a_loss_far_above_guessing_or_grown_tenfold_is_flagged_as_a_too_high_learning_rate():
    uniform = math.log(4)
    (warning,) = learning_warnings(0.9, [1.0, LOSS_GROWTH * uniform + 0.01], 4, RATES)
    assert warning.startswith("Diverging: the training loss grew to 13.87 in the last epoch (first epoch 1;")
    assert warning.endswith(f"Likely cause: the learning rate is too high ({RATES}): lower it.")
    assert learning_warnings(0.9, [0.05, LOSS_GROWTH * 0.05], 4, RATES)  # tenfold, though below ln 4
    assert learning_warnings(0.9, [0.05, 0.99 * LOSS_GROWTH * 0.05], 4, RATES) == []
    assert learning_warnings(0.9, [2.0, LOSS_GROWTH * uniform], 4, RATES) == []  # at the line, not above
    assert learning_warnings(0.9, [], 4, RATES) == []  # no epoch trained in this process (a finished resume)


def test_both_symptoms_make_one_warning():
    (warning,) = learning_warnings(0.25, [1488.7, 5049.9], 4, RATES)
    assert warning.startswith("Did not learn: final train accuracy 25.00% is within 5 points of chance (25.00%, 4 ")
    assert "; the training loss grew to 5050 in the last epoch (first epoch 1489; " in warning
    assert "Likely cause: the learning rate is too high" in warning
