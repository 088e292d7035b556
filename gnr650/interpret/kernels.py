"""Weight-norm statistics and kernel images.

A "unit" is one output kernel of a conv (or one output row of a linear layer): its L2 norm,
``w.flatten(1).norm(dim=1)``, tracks how much training grows or shrinks each filter. Layers are
always listed in network order (module registration order), so tables and figures read input to
output.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid

from gnr650.files import atomic_write

NORM_COLUMNS = ("phase", "epoch", "index", "layer", "shape", "units", "mean", "std", "min", "max")
VIT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def conv_layers(net: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d of ``net`` in network order (20 for ResNet-18, downsample convs included)."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def vit_linear_layers(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The qkv, proj, fc1 and fc2 linears of each transformer block, in network order."""
    return [
        (name, m)
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.") and name.endswith(VIT_LINEARS)
    ]


@torch.no_grad()
def unit_norms(layers: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """L2 norm of each output unit of each layer, as float32 CPU tensors keyed by layer name."""
    return {name: m.weight.detach().flatten(1).norm(dim=1).float().cpu() for name, m in layers}


def norm_summary(
    norms: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], phase: str, epoch: int
) -> list[dict]:
    """One row per layer: mean, std (population, ddof=0), min and max of the unit norms."""
    return [
        {
            "phase": phase,
            "epoch": epoch,
            "index": i,
            "layer": name,
            "shape": "x".join(map(str, shapes[name])),
            "units": n.numel(),
            "mean": n.mean().item(),
            "std": n.std(correction=0).item(),
            "min": n.min().item(),
            "max": n.max().item(),
        }
        for i, (name, n) in enumerate(norms.items())
    ]


def write_norms_csv(path: str | Path, rows: list[dict]) -> None:
    """Write all summary rows (every phase so far) with a header, atomically; floats at float32 precision."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=NORM_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: f"{v:.9g}" if isinstance(v, float) else v for k, v in row.items()})

    atomic_write(path, write)


def read_norms_csv(path: str | Path) -> list[dict]:
    """The rows ``write_norms_csv`` wrote, as strings (written back unchanged)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def default_kernel_layers(net: nn.Module) -> list[str]:
    """The first conv of each top-level child that has one: for ResNet-18 ``conv1`` and the first
    conv of ``layer1``..``layer4`` (one per stage)."""
    names = []
    for child_name, child in net.named_children():
        convs = conv_layers(child)
        if convs:
            names.append(f"{child_name}.{convs[0][0]}" if convs[0][0] else child_name)
    return names


@torch.no_grad()
def kernel_grid(
    weight: torch.Tensor, num_kernels: int = 64, channel: int | None = None, nrow: int | None = None
) -> tuple[torch.Tensor, bool]:
    """Tile the first ``num_kernels`` kernels of a conv weight [out, in, kh, kw] with ``make_grid``.

    RGB-input kernels (``in == 3`` and no ``channel``) become colour tiles, each min-max scaled to
    [0, 1]. Other kernels are reduced to one channel (mean over input channels, or ``channel``) and
    divided by their own max |w|, keeping the sign in [-1, 1] for a diverging colour map.
    Returns ``(grid, is_rgb)``: grid is [3, H, W] for RGB, else [H, W]; padding is NaN.
    """
    w = weight.detach().float().cpu()[:num_kernels]
    nrow = nrow or max(1, int(round(w.shape[0] ** 0.5)))
    if w.shape[1] == 3 and channel is None:
        return make_grid(w, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=float("nan")), True
    w = w.mean(dim=1, keepdim=True) if channel is None else w[:, channel : channel + 1]
    w = w / w.flatten(1).abs().amax(dim=1).clamp_min(1e-12)[:, None, None, None]
    return make_grid(w, nrow=nrow, padding=1, pad_value=float("nan"))[0], False
