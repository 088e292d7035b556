"""One job's figures read right: drift of conv and norm layers apart, attention maps cell by cell with the patch
grid and a colour bar."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gnr650.interpret import faithfulness as faith
from gnr650.interpret.analysis import NORM_LAYERS, ROOT_PARAMS, WEIGHT_LAYERS, layer_kinds, parameter_groups
from gnr650.interpret.change_figures import drift_figure, gradcam_figure
from gnr650.interpret.figures import ATTENTION_CMAP, attention_figure


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1))
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_layer_kinds_put_batch_and_layer_norms_apart_from_weights():
    names = list(parameter_groups(_Net()))
    assert layer_kinds(_Net(), names) == {WEIGHT_LAYERS: [ROOT_PARAMS, "conv", "head"], NORM_LAYERS: ["bn", "norm"]}


def test_drift_figure_draws_conv_and_norm_layers_as_separate_lines():
    drift = {"conv1": 0.05, "bn1": 0.002, "layer1.0.conv1": 0.03, "layer1.0.bn1": 0.001, "fc": 0.06}
    kinds = {WEIGHT_LAYERS: ["conv1", "layer1.0.conv1", "fc"], NORM_LAYERS: ["bn1", "layer1.0.bn1"]}
    fig = drift_figure({kind: {m: drift[m] for m in layers} for kind, layers in kinds.items()}, "drift", "change")
    drawn = {}
    for ax in fig.axes:
        (line,) = ax.lines
        names = [t.get_text() for t in ax.get_xticklabels()]
        drawn[ax.get_title()] = dict(zip(names, line.get_ydata()))
    assert drawn == {
        f"{WEIGHT_LAYERS} (3)": {"conv1": 0.05, "layer1.0.conv1": 0.03, "fc": 0.06},
        f"{NORM_LAYERS} (2)": {"bn1": 0.002, "layer1.0.bn1": 0.001},
    }


def test_attention_maps_are_drawn_cell_by_cell_on_the_patch_grid_with_a_colour_bar():
    grid, layers, heads = (4, 4), 3, 2
    maps = torch.rand(layers, heads, *grid)
    fig = attention_figure(
        torch.rand(3, 32, 32), maps.mean(1), torch.rand(*grid), {0: maps[0]}, [f"blocks.{i}" for i in range(3)], "t"
    )
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == ATTENTION_CMAP]
    assert len(heat) == layers + 1 + heads  # every layer, the rollout, the heads of layer 0
    assert all(im.get_interpolation() == "nearest" and im.get_array().shape == grid for im in heat)
    overlays = [ax for ax in fig.axes if any(im in heat for im in ax.images)]
    assert all(len(ax.collections) == 2 for ax in overlays)  # the patch borders: rows and columns
    assert [len(ax.collections[0].get_segments()) for ax in overlays] == [grid[0] - 1] * len(overlays)
    (bar,) = [ax for ax in fig.axes if "attention" in ax.get_ylabel()]
    assert bar.get_ylim() == (0.0, 1.0)


def test_gradcam_is_drawn_on_the_grid_it_was_computed_at_with_a_colour_bar():
    grid = (4, 4)
    cells = torch.rand(2, *grid)
    upsampled = np.kron(cells.numpy(), np.ones((8, 8), dtype=np.float32))  # as pytorch-grad-cam hands it back: 32x32
    maps = faith.pooled(upsampled, grid)
    torch.testing.assert_close(maps, cells)  # averaging back onto the grid recovers each cell exactly
    fig = gradcam_figure(torch.rand(2, 3, 32, 32), maps, ["AnnualCrop → Forest", "Forest → Forest"], "t")
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == ATTENTION_CMAP]
    assert len(heat) == 2 and all(im.get_interpolation() == "nearest" for im in heat)
    for im, expected in zip(heat, maps):
        np.testing.assert_array_equal(np.asarray(im.get_array()), expected.numpy())
    assert all(len(ax.collections) == 2 for ax in fig.axes if ax.images and ax.images[-1] in heat)  # grid drawn
    (bar,) = [ax for ax in fig.axes if "Grad-CAM" in ax.get_ylabel()]
    assert bar.get_ylim() == (0.0, 1.0)
