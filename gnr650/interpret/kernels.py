"""Weight norms and kernel images.

A conv "kernel" is one 2-D slice ``w[out, in]`` of a conv weight [out, in, kh, kw]: ``kernel_norms`` gives the L2
norm of every one (ResNet-18: 1.39 M per phase), written in long format (``layer, out, in, phase, epoch, norm``);
``norm_stats`` sums any layer's norms up as mean/std/min/max (one row per layer and phase). The ViT counterpart
norms each output row of a linear layer (``row_norms``). Both tables are ``PhaseTable``s, kept as CSV text per
phase, so a resumed run writes the rows it read back byte for byte. Layers are always listed in network order
(module registration order), so tables and figures read input to output.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid

from gnr650.files import atomic_write

KERNEL_NORM_COLUMNS = ("layer", "out", "in", "phase", "epoch", "norm")
NORM_STATS_COLUMNS = ("phase", "epoch", "index", "layer", "shape", "count", "mean", "std", "min", "max")
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
def kernel_norms(layers: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """L2 norm of every 2-D kernel ``w[out, in]`` of each conv, [out, in] float32 CPU tensors keyed by layer name."""
    return {name: torch.linalg.vector_norm(m.weight.detach().float(), dim=(2, 3)).cpu() for name, m in layers}


@torch.no_grad()
def row_norms(layers: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """L2 norm of each output row of each linear layer, [out] float32 CPU tensors keyed by layer name."""
    return {name: m.weight.detach().float().norm(dim=1).cpu() for name, m in layers}


def _number(value: float) -> str:
    return f"{value:.9g}"  # float32 round-trips at 9 significant digits


def kernel_norm_rows(norms: dict[str, torch.Tensor], phase: str, epoch: int) -> str:
    """``kernel_norms``' values as CSV lines of ``KERNEL_NORM_COLUMNS``, one per kernel, layers in order.

    One printf-style pass per layer (every row's text but the norm, then ``%`` over all its norms): half the
    time of formatting row by row, which counts at 1.39 M rows a phase.
    """
    blocks = []
    for layer, n in norms.items():
        layer, phase_text = layer.replace("%", "%%"), phase.replace("%", "%%")
        per_in = [f"{i},{phase_text},{epoch},%.9g\n" for i in range(n.shape[1])]  # as _number writes floats
        template = "".join(f"{layer},{out},{rest}" for out in range(n.shape[0]) for rest in per_in)
        blocks.append(template % tuple(n.flatten().tolist()))
    return "".join(blocks)


def norm_stats(norms: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], phase: str, epoch: int) -> str:
    """One CSV line of ``NORM_STATS_COLUMNS`` per layer: count, mean, std (population, ddof=0), min and max of
    all its norms (every kernel of a conv, every row of a linear)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for i, (name, n) in enumerate(norms.items()):
        n = n.flatten()
        stats = (n.mean(), n.std(correction=0), n.min(), n.max())
        writer.writerow(
            [phase, epoch, i, name, "x".join(map(str, shapes[name])), n.numel(), *(_number(s.item()) for s in stats)]
        )
    return buffer.getvalue()


@contextlib.contextmanager
def _text_file(path: str, gzipped: bool):
    """A text file for writing; ``gzipped``: fast gzip (level 1) with no name or time in its header, so the same
    rows always give the same bytes (a resumed run rewrites what it read back byte for byte)."""
    if not gzipped:
        with open(path, "w", newline="") as f:
            yield f
        return
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
        io.TextIOWrapper(gz, newline="") as f,
    ):
        yield f


class PhaseTable:
    """A CSV table (gzip-compressed when its name ends in .gz) whose rows come in one block per export phase, kept
    as text: a phase exported again replaces
    its block (moved to the end), and rows read back from the file are written back unchanged."""

    def __init__(self, columns: tuple[str, ...], blocks: dict[str, str] | None = None):
        self.columns = columns
        self.blocks = dict(blocks or {})

    def set(self, phase: str, rows: str) -> None:
        self.blocks.pop(phase, None)
        self.blocks[phase] = rows

    def write(self, path: str | Path) -> None:
        """The header and every phase's rows, atomically."""

        def write(tmp: str) -> None:
            with _text_file(tmp, gzipped=str(path).endswith(".gz")) as f:
                f.write(",".join(self.columns) + "\n")
                f.writelines(self.blocks.values())

        atomic_write(path, write)

    @classmethod
    def read(cls, path: str | Path, columns: tuple[str, ...]) -> PhaseTable:
        """The table ``write`` wrote at ``path``, which must have ``columns``."""
        phase_at = columns.index("phase")
        blocks: dict[str, list[str]] = {}
        with gzip.open(path, "rt", newline="") if str(path).endswith(".gz") else open(path, newline="") as f:
            header = f.readline().rstrip("\n").split(",")
            if tuple(header) != columns:
                raise ValueError(f"{path} has columns {header}, not {list(columns)}")
            for line in f:
                blocks.setdefault(line.split(",", phase_at + 1)[phase_at], []).append(line)
        return cls(columns, {phase: "".join(lines) for phase, lines in blocks.items()})


def default_kernel_layers(net: nn.Module) -> list[str]:
    """The first conv of each top-level child that has one: for ResNet-18 ``conv1`` and the first
    conv of ``layer1``..``layer4`` (one per stage)."""
    names = []
    for child_name, child in net.named_children():
        convs = conv_layers(child)
        if convs:
            names.append(f"{child_name}.{convs[0][0]}" if convs[0][0] else child_name)
    return names


def _first_kernels(weight: torch.Tensor, num_kernels: int, channel: int | None) -> torch.Tensor:
    """The first ``num_kernels`` kernels [N, 1, kh, kw]: the mean over input channels, or input ``channel``."""
    w = weight.detach().float().cpu()[:num_kernels]
    return w.mean(dim=1, keepdim=True) if channel is None else w[:, channel : channel + 1]


def _tiles(w: torch.Tensor, nrow: int | None, **scaling) -> torch.Tensor:
    """Kernels [N, C, kh, kw] tiled by ``make_grid``, about square unless ``nrow``; padding is NaN."""
    nrow = nrow or max(1, int(round(w.shape[0] ** 0.5)))
    return make_grid(w, nrow=nrow, padding=1, pad_value=float("nan"), **scaling)


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
    if weight.shape[1] == 3 and channel is None:
        return _tiles(weight.detach().float().cpu()[:num_kernels], nrow, normalize=True, scale_each=True), True
    w = _first_kernels(weight, num_kernels, channel)
    return _tiles(w / w.flatten(1).abs().amax(dim=1).clamp_min(1e-12)[:, None, None, None], nrow)[0], False


@torch.no_grad()
def kernel_difference_grid(
    start: torch.Tensor, end: torch.Tensor, num_kernels: int = 64, channel: int | None = None, nrow: int | None = None
) -> torch.Tensor:
    """``end - start`` of the first ``num_kernels`` kernels, reduced as ``kernel_grid`` reduces single-channel
    kernels (mean over input channels, or ``channel``; RGB too) but not rescaled: weight units, so that
    kernels that changed more look stronger. [H, W], tiled as ``kernel_grid`` tiles them; padding is NaN."""
    if start.shape != end.shape:
        raise ValueError(f"start and end weights differ in shape: {tuple(start.shape)} vs {tuple(end.shape)}")
    diff = _first_kernels(end, num_kernels, channel) - _first_kernels(start, num_kernels, channel)
    return _tiles(diff, nrow)[0]
