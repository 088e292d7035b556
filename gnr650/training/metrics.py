"""Per-step metrics that accumulate on the device without host syncs.

torchmetrics' multiclass accuracy counts with ``torch.bincount``, whose CUDA kernel reads the batch
maximum back to the host: one sync per training step. One-hot sums give the same counts without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class DeviceAccuracy(Metric):
    """Multiclass accuracy from logits, ``average`` ``micro`` or ``macro``, equal to torchmetrics'
    ``MulticlassAccuracy``: macro averages the classes that occur in the targets or predictions."""

    full_state_update = False

    def __init__(self, num_classes: int, average: str = "micro"):
        super().__init__()
        if average not in ("micro", "macro"):
            raise ValueError(f"average must be 'micro' or 'macro' (got {average!r}).")
        self.num_classes = num_classes
        self.average = average
        for name in ("hits", "seen", "predicted"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        true = F.one_hot(target, self.num_classes)
        pred = F.one_hot(logits.argmax(dim=1), self.num_classes)
        self.hits += (true * pred).sum(0)
        self.seen += true.sum(0)
        self.predicted += pred.sum(0)

    def compute(self) -> torch.Tensor:
        if self.average == "micro":
            return self.hits.sum() / self.seen.sum().clamp_min(1)
        recall = self.hits / self.seen.clamp_min(1)
        present = (self.seen + self.predicted) > 0
        return (recall * present).sum() / present.sum().clamp_min(1)
