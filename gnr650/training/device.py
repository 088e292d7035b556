"""Where training runs, and the memory format that suits the network there."""

from __future__ import annotations

import torch
from torch import nn


def on_gpu(accelerator: str) -> bool:
    """The trainer's ``accelerator`` runs on CUDA (``gpu``/``cuda``, or ``auto`` with a GPU present)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def conv_dominated(net: nn.Module) -> bool:
    """Most of the network's weights are in convolutions (a conv net, not a transformer)."""
    conv = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))
    return conv > sum(p.numel() for p in net.parameters()) / 2


def use_channels_last(setting: bool | str, accelerator: str, net: nn.Module) -> bool:
    """``channels_last: auto``: for conv nets on a GPU, where it is faster."""
    if setting not in ("auto", True, False):
        raise ValueError(f"channels_last must be auto, true or false (got {setting!r}).")
    if setting != "auto":
        return bool(setting)
    return on_gpu(accelerator) and conv_dominated(net)
