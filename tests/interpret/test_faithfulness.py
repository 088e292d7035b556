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


def test_curves_on_a_non_square_grid_one_image_one_step_and_in_the_inputs_dtype():
    """2 x 3 cells, steps=6: one more cell per step; steps=1: only the two shared ends; bfloat16 inputs stay so."""
    x = torch.ones(1, 1, 4, 6)
    order = {"a": torch.tensor([[5, 0, 4, 1, 3, 2]])}
    curves = faith.perturbation_curves(MeanModel(3.0), x, order, (2, 3), steps=6)["a"]
    expected = torch.tensor([_sigmoid(3.0 * (1 - c / 6)) for c in range(7)], dtype=torch.float64)
    torch.testing.assert_close(curves["deletion"][0], expected)
    one = faith.perturbation_curves(MeanModel(3.0), x, order, (2, 3), steps=1)["a"]
    torch.testing.assert_close(one["deletion"][0], expected[[0, -1]])
    torch.testing.assert_close(one["insertion"][0], expected[[-1, 0]])
    seen = []

    def predict(inputs):
        seen.append(inputs.dtype)
        return MeanModel(3.0)(inputs.float())

    faith.perturbation_curves(predict, x.bfloat16(), order, (2, 3), steps=3)
    assert seen == [torch.bfloat16] * 3  # clean, baseline, the perturbed images


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
    zeros_and_ones = torch.zeros(1, 70, 70)  # many ties, as a Grad-CAM map's ReLU zeros: grid order among them
    zeros_and_ones.view(-1)[::7] = 1
    stable = np.argsort(-zeros_and_ones.flatten(1).numpy(), axis=1, kind="stable")
    assert faith.ranking(zeros_and_ones).tolist() == stable.tolist()
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
    assert faith.gradcam_target(net, x, "layer4.0")[::3] == ("layer4.0", (1, 1))  # a named layer, even under 4x4
    with pytest.raises(ValueError, match="'nowhere' is not a module of ResNet"):
        faith.gradcam_target(net, x, "nowhere")


def test_gradcam_target_of_a_vit_is_the_last_blocks_norm1_on_the_patch_grid():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=(32, 48), depth=2)
    name, module, reshape, grid = faith.gradcam_target(vit, torch.zeros(1, 3, 32, 48))
    assert (name, module, grid) == ("blocks.1.norm1", vit.blocks[1].norm1, (2, 3))
    assert reshape(torch.zeros(1, 7, 192)).shape == (1, 192, 2, 3)


class GapLinear(nn.Module):
    """A 1x1 conv (the Grad-CAM layer) then global average pooling and a linear head: the gradient of logit t
    with respect to the conv output is W[t] / (h w) at every position, so Grad-CAM is ReLU(sum_k W[t, k] A_k)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_gradcam_maps_equal_the_closed_form_and_leave_no_trace():
    torch.manual_seed(0)
    net = GapLinear().train()
    x = torch.randn(2, 2, 5, 5)
    targets = torch.tensor([0, 1])
    with torch.inference_mode():  # as in Lightning's test loop
        maps = faith.gradcam_maps(net, x, net.conv, targets)
    with torch.no_grad():
        a = net.conv(x).numpy()
    weights = net.head.weight.detach().numpy()[targets.numpy()]  # [B, K]: the spatial mean of W[t] / (h w) x h w
    cam = np.maximum((weights[:, :, None, None] * a).sum(1), 0)
    cam = cam - cam.min((1, 2), keepdims=True)
    cam = cam / (cam.max((1, 2), keepdims=True) + 1e-7)  # pytorch-grad-cam's per-image scaling to [0, 1]
    np.testing.assert_allclose(maps, cam, atol=1e-5)
    assert not np.allclose(maps[0], maps[1])  # each image's own target
    assert net.training and all(p.grad is None for p in net.parameters())


class TokenModel(nn.Module):
    """ViT-shaped: 1-px patches as tokens after a CLS token, an identity layer on the tokens (the Grad-CAM layer),
    a linear head on the mean patch token. Grad-CAM on the patch grid is ReLU(sum_k W[t, k] x_k)."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Identity()
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        patches = x.flatten(2).transpose(1, 2)  # [B, h w, 2]
        tokens = self.tokens(torch.cat([torch.zeros_like(patches[:, :1]), patches], 1))
        return self.head(tokens[:, 1:].mean(1))


def test_gradcam_of_tokens_reshaped_to_the_grid_in_a_frozen_network():
    torch.manual_seed(0)
    net = TokenModel().requires_grad_(False)  # nothing trainable: the input's gradient makes the graph
    x = torch.randn(2, 2, 3, 4)
    targets = torch.tensor([1, 0])
    maps = faith.gradcam_maps(net, x, net.tokens, targets, faith.vit_token_reshape(1, (3, 4)))
    weights = net.head.weight.numpy()[targets.numpy()]
    cam = np.maximum((weights[:, :, None, None] * x.numpy()).sum(1), 0)
    cam = cam - cam.min((1, 2), keepdims=True)
    np.testing.assert_allclose(maps, cam / (cam.max((1, 2), keepdims=True) + 1e-7), atol=1e-5)
