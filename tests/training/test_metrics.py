"""DeviceAccuracy (sync-free per-step accuracy) equals torchmetrics' MulticlassAccuracy."""

import pytest
import torch
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
        ours.update(logits, target)
        reference.update(logits, target)
    torch.testing.assert_close(ours.compute(), reference.compute())
