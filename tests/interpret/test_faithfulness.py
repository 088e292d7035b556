"""Deletion/insertion curves, AUCs and cell rankings against hand computations (closed forms, trapezoids by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from gnr650.interpret import faithfulness as faith


class MeanModel(nn.Module):
    """Class 0's logit is ``scale`` x the image mean, class 1's is 0: after changing a fraction f of the cells of
    an all-ones image, p(class 0) = sigmoid(scale * (1 - f)) for deletion and sigmoid(scale * f) for insertion."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        logit = self.scale * x.mean(dim=(1, 2, 3))
        return torch.stack([logit, torch.zeros_like(logit)], dim=1).softmax(1)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize(("steps", "counts"), [(3, [0, 1, 3, 4]), (4, [0, 1, 2, 3, 4]), (10, [0, 1, 2, 3, 4])])
def test_curves_follow_the_fraction_of_cells_changed_at_each_step(steps, counts):
    """4 cells: step k changes round(k * 4 / steps) of them (at most one step per cell)."""
    x = torch.ones(2, 1, 4, 4)
    orders = {"a": torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]), "b": torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])}
    curves = faith.perturbation_curves(MeanModel(3.0), x, orders, (2, 2), steps=steps, max_batch=3)
    deletion = torch.tensor([_sigmoid(3.0 * (1 - c / 4)) for c in counts], dtype=torch.float64)
    insertion = torch.tensor([_sigmoid(3.0 * c / 4) for c in counts], dtype=torch.float64)
    for method in orders:
        torch.testing.assert_close(curves[method]["deletion"], deletion.expand(2, -1))
        torch.testing.assert_close(curves[method]["insertion"], insertion.expand(2, -1))


def test_curves_follow_the_predicted_class():
    """A model that predicts class 1 on the clean image: the curves are class 1's probability."""
    x = torch.ones(1, 1, 4, 4)
    curves = faith.perturbation_curves(MeanModel(-2.0), x, {"a": torch.tensor([[0, 1, 2, 3]])}, (2, 2), steps=2)
    p1 = [1 - _sigmoid(-2.0 * f) for f in (1, 0.5, 0)]
    torch.testing.assert_close(curves["a"]["deletion"][0], torch.tensor(p1, dtype=torch.float64))
    torch.testing.assert_close(curves["a"]["insertion"][0], torch.tensor(p1[::-1], dtype=torch.float64))


def test_auc_is_the_trapezoid_over_the_fraction_changed():
    curves = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.4, 0.4, 1.0]], dtype=torch.float64)
    # dx = 1/3: (1 + 0) / 2 / 3 = 1/6; (0.3 + 0.4 + 0.7) / 3
    torch.testing.assert_close(faith.auc(curves), torch.tensor([1 / 6, 1.4 / 3], dtype=torch.float64))
    torch.testing.assert_close(faith.auc(torch.tensor([[0.25, 0.75]])), torch.tensor([0.5]))


def test_ranking_is_descending_and_stable_and_random_ranking_is_a_seeded_permutation():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 5.0]]])
    assert faith.ranking(maps).tolist() == [[1, 2, 0, 3], [3, 0, 1, 2]]  # ties keep the grid order
    orders = faith.random_ranking(3, 9, seed=4)
    assert orders.shape == (3, 9) and all(sorted(row) == list(range(9)) for row in orders.tolist())
    assert torch.equal(orders, faith.random_ranking(3, 9, seed=4))
    assert not torch.equal(orders, faith.random_ranking(3, 9, seed=5))
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation per image


def test_cell_mask_covers_the_first_cells_stretched_to_the_image():
    mask = faith._cell_mask(torch.tensor([[3, 0, 1, 2]]), 2, (2, 2), (4, 6))
    expected = torch.zeros(1, 1, 4, 6)
    expected[..., :2, :3] = 1  # cell 0: top left
    expected[..., 2:, 3:] = 1  # cell 3: bottom right
    assert torch.equal(mask, expected)


def test_vit_tokens_and_gradcam_maps_are_put_on_the_grid():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 1 prefix token, 2 x 3 patches, 3 dims
    grid = faith.vit_token_reshape(1, (2, 3))(tokens)
    assert grid.shape == (2, 3, 2, 3)
    for b, d, r, c in [(0, 0, 0, 0), (1, 2, 1, 2), (0, 1, 0, 2), (1, 0, 1, 0)]:
        assert grid[b, d, r, c] == tokens[b, 1 + 3 * r + c, d]
    maps = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    torch.testing.assert_close(faith.pooled(maps, (2, 2)), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))


def test_gradcam_target_of_a_resnet_is_the_deepest_stage_of_at_least_4x4():
    net = torchvision.models.resnet18(num_classes=3)
    for size, layer, grid in [(64, "layer3", (4, 4)), (32, "layer2", (4, 4)), (8, "layer1", (2, 2))]:
        x = torch.zeros(1, 3, size, size)
        name, module, reshape, found = faith.gradcam_target(net, x)
        assert (name, module, reshape, found) == (layer, net.get_submodule(layer), None, grid)
        assert faith.gradcam_target(net, x, "layer4")[::3] == ("layer4", (max(1, size // 32),) * 2)
    with pytest.raises(ValueError, match="'nowhere' is not a module of ResNet"):
        faith.gradcam_target(net, x, "nowhere")


def test_gradcam_target_of_a_vit_is_the_last_blocks_norm1_on_the_patch_grid():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=(32, 48), depth=2)
    name, module, reshape, grid = faith.gradcam_target(vit, torch.zeros(1, 3, 32, 48))
    assert (name, module, grid) == ("blocks.1.norm1", vit.blocks[1].norm1, (2, 3))
    assert reshape(torch.zeros(1, 7, 192)).shape == (1, 192, 2, 3)
