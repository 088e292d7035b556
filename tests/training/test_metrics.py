"""DeviceAccuracy (sync-free per-step accuracy) equals torchmetrics' MulticlassAccuracy and hand counts."""

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from gnr650.training.metrics import DeviceAccuracy


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_device_accuracy_matches_torchmetrics(average):
    g = torch.Generator().manual_seed(0)
    ours, reference = DeviceAccuracy(6, average), MulticlassAccuracy(6, average=average)
    for _ in range(5):
        target = torch.randint(0, 4, (17,), generator=g)  # classes 4, 5 never occur as targets...
        logits = torch.randn(17, 6, generator=g)
        logits[:3, 4] += 10  # ...but class 4 is predicted, class 5 never is
        logits[:, 5] -= 10
        ours.update(logits, target)
        reference.update(logits, target)
    torch.testing.assert_close(ours.compute(), reference.compute())


def _update(metric, predicted, target):
    metric.update(F.one_hot(torch.tensor(predicted), metric.num_classes).float(), torch.tensor(target))


def test_accuracy_over_batches_equals_hand_counts():
    """Class 3 is predicted in the first batch only and never a target (macro counts it, recall 0); class 4 never
    occurs (macro leaves it out). Hits per class 2/3, 1/1, 1/2, 0/0: micro 4/6, macro (2/3 + 1 + 1/2 + 0) / 4."""
    micro, macro, default = DeviceAccuracy(5, "micro"), DeviceAccuracy(5, "macro"), DeviceAccuracy(5)
    for metric in (micro, macro, default):
        _update(metric, [0, 1, 1, 3], [0, 0, 1, 2])
        _update(metric, [0, 2], [0, 2])
    torch.testing.assert_close(micro.compute(), torch.tensor(4 / 6))
    torch.testing.assert_close(default.compute(), torch.tensor(4 / 6))
    torch.testing.assert_close(macro.compute(), torch.tensor((2 / 3 + 1 + 1 / 2 + 0) / 4))


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_one_right_prediction_is_full_accuracy(average):
    metric = DeviceAccuracy(4, average)
    _update(metric, [2], [2])
    assert metric.compute().item() == 1.0


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_merged_shards_equal_one_pass(average):
    """Ranks' counts are summed at epoch end (DDP): two halves merged give the accuracy of the whole."""
    whole, first, second = (DeviceAccuracy(4, average) for _ in range(3))
    _update(whole, [0, 1, 3, 3, 2], [0, 2, 3, 1, 2])
    _update(first, [0, 1, 3], [0, 2, 3])
    _update(second, [3, 2], [1, 2])
    first.merge_state(second)
    torch.testing.assert_close(first.compute(), whole.compute())


def test_counts_are_integers():
    """Counts stay exact past 2^24 samples (a float32 count would not)."""
    metric = DeviceAccuracy(3, "macro")
    _update(metric, [0, 1], [0, 2])
    assert all(not torch.is_floating_point(getattr(metric, name)) for name in ("hits", "seen", "predicted"))
