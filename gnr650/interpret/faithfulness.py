"""Do the explanations explain the decisions? Deletion and insertion curves (Petsiuk et al. 2018, RISE) for
attention rollout and Grad-CAM against a random patch order, and the Grad-CAM maps themselves.

A map ranks the cells of a grid (ViT: its patches; CNN: the Grad-CAM layer's spatial grid). Deletion
replaces the top-ranked cells, a few more per step, by the baseline (0 after normalisation: the data's
mean colour) and follows the probability of the class the unperturbed image is predicted as; insertion
starts from the baseline image and puts the cells back in the same order. A faithful map gives a low
deletion AUC and a high insertion AUC.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from gnr650.finetune.strategies import evaluating
from gnr650.interpret.analysis import representation_layers
from gnr650.interpret.attention import attention_layers, patch_grid
from gnr650.interpret.features import feature_maps


def ranking(maps: torch.Tensor) -> torch.Tensor:
    """Cells from most to least important: [B, gh, gw] -> [B, gh*gw] flat indices."""
    return maps.flatten(1).argsort(dim=1, descending=True, stable=True)


def random_ranking(batch: int, cells: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(cells, generator=gen) for _ in range(batch)])


def _cell_mask(order: torch.Tensor, count: int, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] mask, 1 on the first ``count`` cells of ``order`` (cells stretched to the image)."""
    flat = torch.zeros(order.shape, dtype=torch.float32)
    flat.scatter_(1, order[:, :count], 1.0)
    return F.interpolate(flat.view(-1, 1, *grid), size=size, mode="nearest")


def perturbation_curves(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    orders: dict[str, torch.Tensor],
    grid: tuple[int, int],
    steps: int,
    max_batch: int = 256,
) -> dict[str, dict[str, torch.Tensor]]:
    """Deletion and insertion curves [B, steps + 1] of ``predict`` (input -> class probabilities [B, K]) for
    inputs ``x`` [B, C, H, W] and each method's cell orders ``orders[method]`` [B, gh*gw]; the target is each
    image's predicted class. Every order shares the curves' ends (deletion starts and insertion ends at ``x``;
    deletion ends and insertion starts at the baseline), so those two go through ``predict`` once; the rest in
    batches of up to ``max_batch`` (few large calls, not one small call per step)."""
    cells = grid[0] * grid[1]
    steps = max(1, min(steps, cells))
    inner = range(1, steps)  # the steps between the two shared ends
    with torch.no_grad():
        clean = predict(x).float().cpu()
        target = clean.argmax(1, keepdim=True)
        ends = torch.cat([clean.gather(1, target), predict(torch.zeros_like(x)).float().cpu().gather(1, target)], 1)
        probs = clean[:0]
        if len(inner):
            perturbed = []
            for order in orders.values():
                masks = [_cell_mask(order, round(k * cells / steps), grid, tuple(x.shape[-2:])) for k in inner]
                masks = torch.stack(masks).to(x.device, x.dtype)  # [S - 1, B, 1, H, W]
                perturbed.append(torch.cat([x * (1 - masks), x * masks]).flatten(0, 1))  # baseline 0: x * (1 - mask)
            probs = torch.cat([predict(chunk).float().cpu() for chunk in torch.cat(perturbed).split(max_batch)])
    picked = probs.gather(1, target.repeat(len(probs) // len(x), 1))[:, 0]
    per_method = picked.view(len(orders), 2, len(inner), len(x)).permute(0, 1, 3, 2).double()  # [M, 2, B, S - 1]
    at_x, at_baseline = ends[:, :1].double(), ends[:, 1:].double()
    return {
        method: {
            "deletion": torch.cat([at_x, per_method[m, 0], at_baseline], 1),
            "insertion": torch.cat([at_baseline, per_method[m, 1], at_x], 1),
        }
        for m, method in enumerate(orders)
    }


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve [B, S] over the fraction of cells changed, 0 to 1 (trapezoid rule)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def vit_token_reshape(num_prefix_tokens: int, grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grad-CAM on a ViT layer: tokens [B, T, D] without the prefix (CLS, registers, prompts) as [B, D, gh, gw]."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, num_prefix_tokens:]
        return patches.reshape(patches.shape[0], *grid, patches.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def gradcam_maps(
    net: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    targets: torch.Tensor,
    reshape: Callable | None = None,
) -> np.ndarray:
    """Grad-CAM (pytorch-grad-cam) of class ``targets`` at ``layer`` for inputs ``x``: [B, H, W] in [0, 1].
    Module train/eval flags are restored after and no gradient is left on the parameters."""
    # Lightning's test loop runs under inference mode: leave it (and no_grad) for the backward pass. The input
    # (an ordinary tensor after the clone) requires grad so that a fully frozen network still has a graph.
    with (
        evaluating(net),
        torch.inference_mode(False),
        torch.enable_grad(),
        GradCAM(model=net, target_layers=[layer], reshape_transform=reshape) as cam,
    ):
        targets = [ClassifierOutputTarget(int(t)) for t in targets]
        maps = cam(input_tensor=x.clone().requires_grad_(True), targets=targets)
    net.zero_grad(set_to_none=True)
    return maps


def pooled(maps: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM maps at input resolution averaged onto the ranking grid: [B, H, W] -> [B, gh, gw]."""
    return F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(maps, dtype=np.float32))[:, None], grid)[:, 0]


def gradcam_target(
    net: nn.Module, x: torch.Tensor, layer: str | None = None
) -> tuple[str, nn.Module, Callable | None, tuple[int, int]]:
    """Where Grad-CAM looks and the grid its maps are ranked on: ``(name, module, token reshape, grid)``.

    ViT: the last block's ``norm1`` (tokens reshaped to the patch grid, prefix tokens excluded). CNN: the
    deepest stage whose output at this input size is still at least 4x4 (its own grid), or ``layer``.
    """
    modules = dict(net.named_modules())
    if layer is not None and layer not in modules:
        raise ValueError(f"Grad-CAM layer {layer!r} is not a module of {type(net).__name__}")
    if attention_layers(net):
        grid = patch_grid(net)
        name = layer or f"blocks.{len(net.blocks) - 1}.norm1"
        return name, modules[name], vit_token_reshape(int(net.num_prefix_tokens), grid), grid
    names = [layer] if layer else representation_layers(net)
    shapes = {n: tuple(m.shape[-2:]) for n, m in feature_maps(net, x[:1], {n: n for n in names}).items()}
    name = layer or ([n for n in names if min(shapes[n]) >= 4] or names[:1])[-1]
    return name, modules[name], None, shapes[name]
