"""Batch transforms on the device, after transfer: uint8 -> float, augment, resize, normalise."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DevicePreprocess(nn.Module):
    """Turns a uint8 batch [N, 3, H, W] into the network's input.

    Augmentation (random crop from a reflect-padded image, horizontal flip) runs at the data's
    native resolution, before the resize to ``img_size``, as it would on the CPU per image.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        img_size: int | None = None,
        augment: bool = False,
        crop_padding: int = 4,
        channels_last: bool = False,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.img_size = img_size
        self.augment = augment
        self.crop_padding = crop_padding
        self.channels_last = channels_last

    def random_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.crop_padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p), mode="reflect")
            oy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=x.device)
            ox = torch.randint(0, 2 * p + 1, (n, 1, 1), device=x.device)
            rows = oy + torch.arange(h, device=x.device).view(1, h, 1)
            cols = ox + torch.arange(w, device=x.device).view(1, 1, w)
            x = padded[torch.arange(n, device=x.device).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
        flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
        return torch.where(flip, x.flip(-1), x)

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = images.float().div_(255)
        if augment and self.augment:
            x = self.random_crop_flip(x)
        if self.img_size and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(
                x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False, antialias=True
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
