"""Tiny generated data that a network can learn in seconds: for tests and smoke runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gnr650.data.datamodule import SPLITS, DecodedImageDataModule, Split
from gnr650.data.validation import is_count


class SyntheticDataModule(DecodedImageDataModule):
    """Each class is a fixed random low-frequency colour pattern; images add per-pixel noise."""

    name = "synthetic"

    def __init__(
        self,
        num_classes: int = 4,
        per_class: int = 16,
        val_per_class: int = 8,
        test_per_class: int = 8,
        image_size: int = 32,
        noise: float = 0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not is_count(num_classes, 2):
            raise ValueError(f"synthetic num_classes must be at least 2 (got {num_classes}).")
        for key, n in (("per_class", per_class), ("val_per_class", val_per_class), ("test_per_class", test_per_class)):
            if not is_count(n):
                raise ValueError(f"dataset.{key} must be a positive integer (got {n}).")
        self.counts = dict(zip(SPLITS, (per_class, val_per_class, test_per_class)))
        self.num_classes_ = num_classes
        self.image_size = image_size
        self.noise = noise

    def load(self):
        g = torch.Generator().manual_seed(self.seed)
        protos = F.interpolate(
            torch.rand(self.num_classes_, 3, 4, 4, generator=g),
            size=self.image_size,
            mode="bilinear",
            align_corners=False,
        )
        splits = {}
        for name, n in self.counts.items():
            labels = torch.arange(self.num_classes_).repeat_interleave(n)
            x = (
                protos[labels] * (1 - self.noise)
                + torch.rand(labels.numel(), 3, self.image_size, self.image_size, generator=g) * self.noise
            )
            splits[name] = Split((x * 255).round().to(torch.uint8), labels)
        return splits, [f"class_{i}" for i in range(self.num_classes_)]
