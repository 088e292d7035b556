"""Figures for the interpretability exports (matplotlib, Agg, no pyplot global state).

Each builder returns a ``Figure``; ``save_figure`` renders it to PNG with the Agg canvas, so the
exports work headless and in worker threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from gnr650.interpret.features import channel_grid

DPI = 120
ATTENTION_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
PHASE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Render ``fig`` to a PNG file with the Agg backend."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png", pil_kwargs={"compress_level": 1})  # zlib dominates at the default 6
    return path


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def norm_figure(phases: dict[str, dict[str, torch.Tensor]], title: str, ylabel: str) -> Figure:
    """Per-layer distribution of unit norms in network order, one box per phase side by side; with
    two or more phases a lower panel shows the change of the mean from the first to the last phase.
    Whiskers span min to max (as in the CSV); the y axis turns logarithmic when norms span > 20x."""
    labels = list(phases)
    layers = list(phases[labels[0]])
    width = 0.8 / len(labels)
    fig_width = float(np.clip(0.25 * len(layers) * len(labels) ** 0.5 + 2, 8, 20))
    fig = Figure(figsize=(fig_width, 7.5 if len(labels) > 1 else 5), layout="constrained")
    axes = fig.subplots(
        2 if len(labels) > 1 else 1, 1, sharex=True, squeeze=False, height_ratios=[3, 1] if len(labels) > 1 else [1]
    )[:, 0]
    x = np.arange(len(layers))
    for k, (label, colour) in enumerate(zip(labels, PHASE_COLOURS)):
        pos = x - 0.4 + width * (k + 0.5)
        axes[0].boxplot(
            [phases[label][name].flatten().numpy() for name in layers],
            positions=pos,
            widths=width * 0.9,
            whis=(0, 100),
            patch_artist=True,
            boxprops={"facecolor": colour, "alpha": 0.6},
            medianprops={"color": "black"},
        )
        axes[0].plot([], [], color=colour, lw=8, alpha=0.6, label=label)
    values = torch.cat([n.flatten() for norms in phases.values() for n in norms.values()])
    if values.max() > 20 * values.min().clamp_min(1e-12):
        axes[0].set_yscale("log")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title(title)
    axes[0].legend(title="phase", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0].grid(axis="y", alpha=0.3)
    if len(labels) > 1:
        first, last = phases[labels[0]], phases[labels[-1]]
        change = np.array([100 * (last[n].mean() / first[n].mean() - 1).item() for n in layers])
        axes[1].bar(x, change, color=np.where(change >= 0, "tab:green", "tab:red"))
        axes[1].axhline(0, color="black", lw=0.8)
        axes[1].set_ylabel("change of mean (%)")
        axes[1].set_title(f"change of the mean norm, {labels[0]} → {labels[-1]}", fontsize=10)
        axes[1].grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, layers, rotation=90, fontsize=8)
    axes[-1].set_xlabel("layer (network order)")
    return fig


def kernel_figure(grid: torch.Tensor, is_rgb: bool, title: str) -> Figure:
    """A kernel grid from ``kernels.kernel_grid``: RGB tiles, or single-channel tiles on a diverging map."""
    fig = Figure(figsize=(6, 6.4 if is_rgb else 6), layout="constrained")
    ax = fig.subplots()
    if is_rgb:
        ax.imshow(np.nan_to_num(_hwc(grid), nan=1.0), interpolation="nearest")
    else:
        im = ax.imshow(grid.numpy(), cmap=DIVERGING_CMAP, vmin=-1, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label="weight / max|w| of the kernel")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return fig


def kernel_difference_figure(diff: torch.Tensor, title: str) -> Figure:
    """End - start kernels from ``kernels.kernel_difference_grid`` on one symmetric diverging scale, ±max|Δw| of
    the grid in weight units (white: unchanged), so kernels that changed more stand out."""
    fig = Figure(figsize=(6, 6.3), layout="constrained")
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(diff.numpy()), initial=0.0)) or 1.0  # all unchanged (frozen): any scale
    im = ax.imshow(diff.numpy(), cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Δw = end − start (weight units, symmetric)")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return fig


def feature_map_figure(
    image: torch.Tensor,
    maps: dict[str, torch.Tensor],
    left_out: dict[str, tuple[int, int]],
    input_hw: tuple[int, int],
    num_channels: int,
    title: str,
) -> Figure:
    """The input image and, per stage in ``maps``, the first ``num_channels`` channels of its activation [C, H, W],
    each channel min-max scaled on its own (``features.channel_grid``; grey: a constant channel). The stages in
    ``left_out`` (label -> map size), too small to show a layout, are named with their size."""
    fig = Figure(figsize=(3.0 * (len(maps) + 1) + 0.8 * bool(maps), 4.1), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps) + 1))
    axes[0].imshow(_hwc(image), interpolation="nearest")
    axes[0].set_title(f"input {image.shape[1]}x{image.shape[2]}\n(model sees {input_hw[0]}x{input_hw[1]})", fontsize=9)
    cmap = colormaps["viridis"].with_extremes(under="0.8", bad="white")
    for ax, (label, fmap) in zip(axes[1:], maps.items()):
        c, h, w = fmap.shape
        im = ax.imshow(channel_grid(fmap, num_channels).numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{label}: {c}x{h}x{w}\nfirst {min(c, num_channels)} channels", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if maps:
        fig.colorbar(
            im,
            ax=axes[1:],
            shrink=0.8,
            extend="min",
            label="activation, min-max per channel\n(0 = its min, 1 = its max; grey: constant)",
        )
    if left_out:
        sizes = ", ".join(f"{label} {h}x{w}" for label, (h, w) in left_out.items())
        title += f"\nLeft out, too small to show a layout at this input size: {sizes}"
    fig.suptitle(title, fontsize=10)
    return fig


def draw_patch_grid(ax, grid: tuple[int, int], width: float, height: float) -> None:
    """Thin white borders between the patches of a ``grid`` (rows, cols) map drawn over a width x height image."""
    rows, cols = grid
    ax.hlines(np.arange(1, rows) * height / rows, 0, width, colors="white", lw=0.3, alpha=0.4)
    ax.vlines(np.arange(1, cols) * width / cols, 0, height, colors="white", lw=0.3, alpha=0.4)


def _overlay(ax, image: np.ndarray, amap: torch.Tensor, title: str):
    """Dimmed greyscale image under an attention map scaled to the map's max, one flat cell per patch (nearest:
    a bilinear blur would invent detail between patches) with the patch borders drawn; grey keeps the image's
    colours from being read as attention."""
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    ax.imshow(image.mean(axis=2), cmap="gray", vmin=0, vmax=1.5 * 255, extent=extent)
    ax.imshow(
        (amap / amap.max().clamp_min(1e-12)).numpy(),
        cmap=ATTENTION_CMAP,
        vmin=0,
        vmax=1,
        alpha=0.6,
        extent=extent,
        interpolation="nearest",
    )
    draw_patch_grid(ax, amap.shape, width, height)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _panel_grid(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    """A fixed grid of square panels with room for the title and a colour bar on the right (a fixed
    layout: constrained layout doubles the render time of these many-panel figures)."""
    width, height = 1.8 * cols + 1.0, 2.05 * rows + 0.9
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(
        rows,
        cols,
        left=0.1 / width,
        right=1 - 0.95 / width,
        bottom=0.05 / height,
        top=1 - 0.9 / height,
        wspace=0.06,
        hspace=0.3,
    )
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(cols)] for r in range(rows)])
    fig.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    return fig, axes


def _colorbar(fig: Figure, label: str) -> None:
    """The attention colour bar (opaque, although the overlays are blended) on the figure's right edge."""
    width, _ = fig.get_size_inches()
    cax = fig.add_axes((1 - 0.75 / width, 0.25, 0.15 / width, 0.5))
    fig.colorbar(ScalarMappable(Normalize(0, 1), ATTENTION_CMAP), cax=cax, label=label)


def attention_figure(
    image: torch.Tensor,
    layer_maps: torch.Tensor,
    rollout: torch.Tensor,
    head_maps: dict[int, torch.Tensor],
    layer_labels: list[str],
    title: str,
    ncols: int = 7,
) -> Figure:
    """One image: CLS-to-patch attention of every layer (head mean) and the rollout, then one row of
    per-head maps for each chosen layer. ``layer_maps`` [L, gh, gw], ``head_maps`` {layer: [H, gh, gw]}."""
    img = _hwc(image)
    panels = [(f"{name}\nhead mean", m) for name, m in zip(layer_labels, layer_maps)] + [("rollout", rollout)]
    heads = max((m.shape[0] for m in head_maps.values()), default=0)
    cols = max(ncols, heads)
    top_rows = -(-(len(panels) + 1) // cols)
    fig, axes = _panel_grid(top_rows + len(head_maps), cols, title)
    top = axes[:top_rows].flatten()
    top[0].imshow(img)
    top[0].set_title("input", fontsize=9)
    for ax, (label, amap) in zip(top[1:], panels):
        _overlay(ax, img, amap, label)
    for r, (layer, maps) in enumerate(head_maps.items()):
        for h in range(maps.shape[0]):
            _overlay(axes[top_rows + r, h], img, maps[h], f"{layer_labels[layer]}\nhead {h}")
    for ax in axes.flatten():
        if not ax.has_data():
            ax.set_axis_off()
    top[0].set_xticks([])
    top[0].set_yticks([])
    _colorbar(fig, "CLS→patch attention / map max")
    return fig


def rollout_overview_figure(
    images: torch.Tensor, rollouts: torch.Tensor, captions: list[str], title: str, ncols: int = 5
) -> Figure:
    """Attention rollout of every selected image on one page, captioned with its class."""
    fig, axes = _panel_grid(-(-len(captions) // ncols), ncols, title)
    axes = axes.flatten()
    for ax, image, amap, caption in zip(axes, images, rollouts, captions):
        _overlay(ax, _hwc(image), amap, caption)
    for ax in axes[len(captions) :]:
        ax.set_axis_off()
    _colorbar(fig, "rollout (CLS→patch) / map max")
    return fig
