"""Figures of one job's change analysis (start vs end network): per-layer curves, confusion matrix,
per-class accuracy, t-SNE, deletion/insertion curves and Grad-CAM panels. Agg figures, no pyplot."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from gnr650.interpret.figures import ATTENTION_CMAP, _hwc, draw_patch_grid


def drift_figure(panels: dict[str, dict[str, float]], title: str, ylabel: str) -> Figure:
    """One panel per kind of layer (``{kind: {layer: value}}``, layers in network order), each with its own
    layers and scale: a conv and the norm after it differ by orders of magnitude, so one line through both
    would be a meaningless sawtooth."""
    panels = {kind: values for kind, values in panels.items() if values}
    width = max(6.0, 0.3 * max(len(values) for values in panels.values()) + 2)
    fig = Figure(figsize=(width, 3.2 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (kind, values) in zip(axes, panels.items()):
        names = list(values)
        ax.plot(range(len(names)), list(values.values()), marker="o", markersize=3, label=kind)
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 45, fontsize=7)
        ax.set_title(f"{kind} ({len(names)})", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("layer (module name, network order)")
    fig.suptitle(title, fontsize=10)
    return fig


def panels_figure(panels: list[tuple[str, str, list[str], dict[str, list]]], title: str) -> Figure:
    """Stacked per-layer panels ``(title, ylabel, layer names, {label: values})``, one line per label; a value
    that is a list (e.g. one per attention head) is drawn as dots with its mean as the line."""
    width = max(6.0, 0.35 * max(len(names) for _, _, names, _ in panels) + 2)
    fig = Figure(figsize=(width, 2.6 * len(panels) + 0.5), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (panel_title, ylabel, names, series) in zip(axes, panels):
        for i, (label, values) in enumerate(series.items()):
            colour = f"C{i}"
            means = [float(np.mean(v)) for v in values]
            for x, v in enumerate(values):
                if isinstance(v, list):
                    ax.scatter([x] * len(v), v, s=6, color=colour, alpha=0.5)
            ax.plot(range(len(names)), means, marker="o", markersize=3, color=colour, label=label)
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45 if len(names) > 8 else 0)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over the data
    fig.suptitle(title, fontsize=10)
    return fig


def evaluation_figure(matrix: list[list[int]], per_class: dict[str, float], title: str) -> Figure:
    """Confusion matrix (counts; colour = fraction of the true class) beside the per-class accuracy."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    names = list(per_class)
    k = len(names)
    fig = Figure(figsize=(max(8.0, 1.0 * k + 4), max(3.5, 0.45 * k + 2)), layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=[1.2, 1])
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=6,
                color="w" if rows[i, j] > 0.6 else "k",
            )
    bars.barh(range(k), [100 * per_class[n] for n in names], color="tab:blue")
    bars.set_yticks(range(k), names, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlim(0, 100)
    bars.set_xlabel("accuracy (%)")
    fig.suptitle(title, fontsize=10)
    return fig


def tsne_figure(points: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], title: str) -> Figure:
    """2-D embeddings side by side (one panel per network), coloured by class."""
    fig = Figure(figsize=(5 * len(points) + 1.5, 4.5), layout="constrained")
    axes = fig.subplots(1, len(points), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(class_names))]
    for ax, (label, xy) in zip(axes, points.items()):
        for c, name in enumerate(class_names):
            hit = labels == c
            ax.scatter(xy[hit, 0], xy[hit, 1], s=6, color=colours[c], label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle(title, fontsize=10)
    return fig


def faithfulness_figure(curves: dict[str, dict[str, np.ndarray]], title: str) -> Figure:
    """Mean deletion and insertion curves (target-class probability vs fraction of patches changed) per method."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, which in zip(axes, ("deletion", "insertion")):
        for method, by_kind in curves.items():
            curve = by_kind[which]
            ax.plot(np.linspace(0, 1, len(curve)), curve, label=method, linestyle="--" if method == "random" else "-")
        ax.set_xlabel(f"fraction of patches {'removed' if which == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the target class")
        ax.set_title(which, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def gradcam_figure(images: torch.Tensor, maps: torch.Tensor, captions: list[str], title: str) -> Figure:
    """Each image with its Grad-CAM map overlaid: ``maps`` [B, gh, gw] on the grid Grad-CAM computed at, drawn one
    flat cell per grid cell (nearest, the grid shown; a smooth upsampling would invent detail between cells)."""
    n = len(images)
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.4 * cols, 2.5 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, image, amap, caption in zip(axes, images, maps, captions):
        h, w = image.shape[-2:]
        ax.imshow(_hwc(image), extent=(0, w, h, 0))
        ax.imshow(
            np.asarray(amap),
            cmap=ATTENTION_CMAP,
            alpha=0.5,
            vmin=0,
            vmax=1,
            extent=(0, w, h, 0),
            interpolation="nearest",
        )
        draw_patch_grid(ax, tuple(amap.shape), w, h)
        ax.set_title(caption.replace(" → ", "\n→ "), fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0, 1), ATTENTION_CMAP), ax=axes, shrink=0.6, label="Grad-CAM (0-1)")
    fig.suptitle(title, fontsize=10)
    return fig
