"""The attention overlay ``gnr650-predict --attention`` writes per image: the image and its attention rollout,
each at a readable size whatever the input size, and a slim labelled colour bar."""

from __future__ import annotations

import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from gnr650.interpret.figures import ATTENTION_CMAP, DPI

PANEL_INCHES = 2.6  # 312 px at the figures' DPI: a 32 or 64 px input is shown in 5 to 10 px blocks
OVERLAY_ALPHA = 0.45  # the grey image stays visible through the map
COLORBAR_INCHES = 0.12
# Margins in inches: left, between the panels, before the colour bar, right (ticks and label), bottom, top (titles).
_LEFT, _GAP, _BAR_GAP, _RIGHT, _BOTTOM, _TOP = 0.1, 0.15, 0.12, 0.75, 0.1, 0.75
COLORBAR_LABEL = "attention rollout (CLS→patch) / its max"


def attention_overlay_figure(image: torch.Tensor, amap: torch.Tensor, caption: str, title: str) -> Figure:
    """``image`` (uint8 [3, H, W]) beside its rollout ``amap`` ([h, w], scaled to its max, bilinear to the image)
    over a dimmed grey copy (its colours would read as attention). Pixels are drawn nearest-neighbour: a small
    input shows as blocks, not blurred."""
    width = _LEFT + 2 * PANEL_INCHES + _GAP + _BAR_GAP + COLORBAR_INCHES + _RIGHT
    height = _BOTTOM + PANEL_INCHES + _TOP
    fig = Figure(figsize=(width, height), dpi=DPI)

    def box(left: float, box_width: float) -> tuple[float, float, float, float]:
        return left / width, _BOTTOM / height, box_width / width, PANEL_INCHES / height

    hwc = image.permute(1, 2, 0).cpu().numpy()
    extent = (0, hwc.shape[1], hwc.shape[0], 0)
    shown = fig.add_axes(box(_LEFT, PANEL_INCHES))
    shown.imshow(hwc, interpolation="nearest", extent=extent)
    shown.set_title(f"{caption}\n{hwc.shape[1]}×{hwc.shape[0]} px image", fontsize=9)
    overlay = fig.add_axes(box(_LEFT + PANEL_INCHES + _GAP, PANEL_INCHES))
    overlay.imshow(hwc.mean(axis=2), cmap="gray", vmin=0, vmax=1.5 * 255, interpolation="nearest", extent=extent)
    overlay.imshow(
        (amap / amap.max().clamp_min(1e-12)).cpu().numpy(),
        cmap=ATTENTION_CMAP,
        vmin=0,
        vmax=1,
        alpha=OVERLAY_ALPHA,
        interpolation="bilinear",
        extent=extent,
    )
    overlay.set_title("attention rollout", fontsize=9)
    for ax in (shown, overlay):
        ax.set_axis_off()
    bar = fig.add_axes(box(_LEFT + 2 * PANEL_INCHES + _GAP + _BAR_GAP, COLORBAR_INCHES))
    fig.colorbar(ScalarMappable(Normalize(0, 1), ATTENTION_CMAP), cax=bar)
    bar.set_ylabel(COLORBAR_LABEL, fontsize=8)
    bar.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig
