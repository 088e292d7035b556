"""ViT attention extraction, CLS-to-patch maps and attention rollout.

timm's fused attention (``F.scaled_dot_product_attention``) never materialises the weights, so a
hook would silently see nothing. ``extract_attention`` switches ``fused_attn`` off only for its
own forward pass (eval mode, no grad), hooks ``attn_drop`` (an identity in eval whose input is the
softmaxed attention), then restores the flags and removes the hooks; training keeps the fast path.
It raises if any layer captured nothing, so the silent-empty failure cannot pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gnr650.finetune.strategies import evaluating


def attention_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules (timm ``Attention``-like: ``fused_attn`` and ``attn_drop``) in network order."""
    return [
        (name, m)
        for name, m in net.named_modules()
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def patch_grid(net: nn.Module) -> tuple[int, int]:
    """Patch grid (rows, cols) of the model, from its patch embedding (any patch size / img_size)."""
    grid = tuple(int(g) for g in net.patch_embed.grid_size)
    return grid[0], grid[1]


@contextmanager
def capture_outputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each module's output (one tensor per call) while the block runs; hooks removed after.

    Our own hooks: timm's ``AttentionExtract`` leaves its hooks on the model and switches it to eval for good.
    """
    outputs: dict[str, list[torch.Tensor]] = {label: [] for label in modules}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, label=label: outputs[label].append(out.detach()))
        for label, m in modules.items()
    ]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def unfused(modules: list[nn.Module]) -> Iterator[None]:
    """Make the attention modules compute explicit weights for the block; restore their flags after."""
    flags = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.fused_attn = flag


def extract_attention(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Attention weights of every layer for preprocessed input ``x`` [B, 3, H, W].

    Returns ``(attn, layer_names)`` with attn float32 CPU [B, layers, heads, tokens, tokens]
    (softmax rows, prefix tokens included).
    """
    layers = attention_layers(net)
    if not layers:
        raise ValueError(f"{type(net).__name__} has no timm attention layers")
    with (
        evaluating(net),
        unfused([m for _, m in layers]),
        capture_outputs({name: m.attn_drop for name, m in layers}) as captured,
    ):
        net(x)
    empty = [name for name, maps in captured.items() if len(maps) != 1]
    if empty:
        raise RuntimeError(f"no attention weights captured for {empty}: is fused attention still on?")
    attn = torch.stack([captured[name][0].float().cpu() for name, _ in layers], dim=1)
    return attn, [name for name, _ in layers]


def cls_attention(attn: torch.Tensor) -> torch.Tensor:
    """The CLS query's attention row over all tokens: [B, L, H, T, T] -> [B, L, H, T]."""
    return attn[..., 0, :]


def patch_maps(cls_attn: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """CLS-to-patch attention [..., T] reshaped to the patch grid [..., gh, gw] (prefix tokens dropped)."""
    patches = cls_attn[..., num_prefix_tokens:]
    if patches.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    return patches.reshape(*patches.shape[:-1], *grid)


def attention_rollout(attn: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of [B, L, H, T, T] as the CLS-to-patch map [B, gh, gw].

    Per layer: mean over heads, add the identity (the residual path), renormalise rows; multiply
    the layers from first to last. The CLS row is restricted to patch tokens and renormalised to 1.
    """
    a = attn.double().mean(dim=2)
    a = a + torch.eye(a.shape[-1], dtype=a.dtype)
    a = a / a.sum(dim=-1, keepdim=True)
    rollout = a[:, 0]
    for layer in range(1, a.shape[1]):
        rollout = a[:, layer] @ rollout
    cls_row = rollout[:, 0, num_prefix_tokens:]
    return patch_maps((cls_row / cls_row.sum(dim=-1, keepdim=True)).float(), 0, grid)


def images_per_class(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` images of each class (fewer if the class has fewer), drawn with a
    fixed seed so every run of a study looks at the same images. Ordered by class."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]].sort().values)
    return torch.cat(picks)


def save_attention_npz(
    path: str | Path,
    attn: torch.Tensor,
    rollout: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    class_names: list[str],
    images: torch.Tensor,
    layer_names: list[str],
) -> None:
    """The raw arrays for cross-run comparison (format shared with the comparison tooling).

    ``predictions``: the model's class index for each image (files written before it was added lack the key).
    """
    np.savez_compressed(
        path,
        cls_attention=cls_attention(attn).numpy().astype(np.float32),
        rollout=rollout.numpy().astype(np.float32),
        grid=np.asarray(grid, dtype=np.int64),
        num_prefix_tokens=np.int64(num_prefix_tokens),
        labels=labels.numpy().astype(np.int64),
        predictions=predictions.numpy().astype(np.int64),
        class_names=np.asarray(class_names, dtype=str),
        images=images.numpy().astype(np.uint8),
        layer_names=np.asarray(layer_names, dtype=str),
    )
