"""What fine-tuning changed, as numbers: weight drift, linear CKA, per-layer linear probes, attention distance
and entropy, all from one hooked forward pass per network over a fixed probe set.

Plain functions on tensors; the callback in ``gnr650.interpret.change`` schedules them. Everything is computed
in float64 on the CPU so that identical networks give exactly identical numbers (drift 0, CKA 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from gnr650.finetune.strategies import evaluating
from gnr650.interpret.attention import attention_layers, capture_outputs, unfused
from gnr650.models.factory import classifier_name

ROOT_PARAMS = "(root)"  # label of parameters owned by the network itself (ViT cls_token, pos_embed)


def probe_indices(labels: torch.Tensor, num_images: int, seed: int) -> torch.Tensor:
    """``num_images`` indices, class-balanced and drawn with ``seed``: a random order within each class,
    then round-robin over classes (class counts differ by at most one unless a class runs out).
    ``num_images`` larger than ``labels`` gives all of them."""
    if num_images <= 0:
        raise ValueError(f"analysis.probe_images must be a positive number of images (got {num_images}).")
    gen = torch.Generator().manual_seed(seed)
    keys = torch.empty(labels.numel(), dtype=torch.long)
    classes = labels.unique()
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        ranks = torch.randperm(idx.numel(), generator=gen)
        keys[idx] = ranks * len(classes) + (classes == c).nonzero().item()  # rank first, then class
    return keys.argsort()[:num_images]


def probe_halves(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of a class-balanced split in two: alternate images of each class (fit, score)."""
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        pos = (labels == c).nonzero().flatten()
        rank[pos] = torch.arange(pos.numel())
    return (rank % 2 == 0).nonzero().flatten(), (rank % 2 == 1).nonzero().flatten()


def parameter_groups(net: nn.Module) -> dict[str, list[str]]:
    """Module name -> the names of the parameters it owns directly (leaf layers: convs, linears, norms,
    the patch embedding's projection), plus ``(root)`` for the network's own parameters."""
    groups = {}
    for name, module in net.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if own:
            groups[name or ROOT_PARAMS] = own
    return groups


NORM_LAYERS, WEIGHT_LAYERS = "normalisation layers (BatchNorm, LayerNorm)", "conv, linear and embedding layers"


def layer_kinds(net: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """The layers ``names`` (as in ``parameter_groups``) split into normalisation layers (any ``*Norm*`` module:
    torch's and timm's BatchNorm/LayerNorm/GroupNorm/RmsNorm) and the rest, each in the given order."""
    modules = dict(net.named_modules())
    kinds: dict[str, list[str]] = {WEIGHT_LAYERS: [], NORM_LAYERS: []}
    for name in names:
        module = modules.get("" if name == ROOT_PARAMS else name)
        kinds[NORM_LAYERS if "Norm" in type(module).__name__ else WEIGHT_LAYERS].append(name)
    return kinds


RESNET_STAGE = re.compile(r"layer\d+")


def block_names(net: nn.Module) -> list[str]:
    """The residual blocks in order: ViT ``blocks.i``, ResNet ``layerS.i``; other timm CNNs: their stages."""
    if isinstance(getattr(net, "blocks", None), nn.Sequential):
        return [f"blocks.{i}" for i in range(len(net.blocks))]
    blocks = [
        f"{stage}.{i}"
        for stage, module in net.named_children()
        if RESNET_STAGE.fullmatch(stage) and isinstance(module, nn.Sequential)
        for i in range(len(module))
    ]
    return blocks or representation_layers(net)


def representation_layers(net: nn.Module) -> list[str]:
    """Where representations are compared: after each ViT block, each ResNet stage, or each feature stage of
    another timm CNN (``feature_info``, channels-first maps)."""
    if isinstance(getattr(net, "blocks", None), nn.Sequential):
        return block_names(net)
    stages = [n for n, m in net.named_children() if RESNET_STAGE.fullmatch(n) and isinstance(m, nn.Sequential)]
    if not stages and getattr(net, "output_fmt", "NCHW") == "NCHW" and not attention_layers(net):
        stages = [info["module"] for info in getattr(net, "feature_info", [])]
    if not stages:
        raise ValueError(
            f"The analyses know timm ViTs, ResNets and timm CNNs with channels-first stages; {type(net).__name__} "
            "is none of them (e.g. Swin's windowed attention). Leave the analysis callbacks out: callbacks=default."
        )
    return stages


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A float64 CPU copy of every parameter (W0)."""
    return {name: p.detach().to("cpu", torch.float64, copy=True) for name, p in net.named_parameters()}


def buffer_snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every buffer (BatchNorm statistics): they shape the features as much as the weights."""
    return {name: b.detach().to("cpu", copy=True) for name, b in net.named_buffers()}


def classifier(net: nn.Module) -> tuple[str, nn.Module]:
    """The network's classifier (name, module): timm's ``get_classifier()`` (whatever sits there, e.g. a k-NN
    head), else the last linear layer (torchvision ResNet's ``fc``). Its input is the representation the
    network classifies."""
    if hasattr(net, "get_classifier"):
        name = classifier_name(net)
        return name, net.get_submodule(name)
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def same_probe_features(
    net: nn.Module,
    start: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    end: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> bool:
    """Whether a probe pass now would record exactly what the start pass did: every parameter and buffer
    outside the classifier is bit-identical between ``start`` and ``end`` (each ``(snapshot,
    buffer_snapshot)``). Everything a probe pass keeps is computed before the classifier, so ``frozen``,
    ``last`` and k-NN jobs can reuse the start pass instead of running the same forward pass again."""
    head = classifier(net)[0] + "."

    def features_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: t for name, t in state.items() if not name.startswith(head)}

    for before, after in zip(map(features_part, start), map(features_part, end)):
        if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
            return False
    return True


def weight_drift(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], groups: dict[str, list[str]]) -> dict:
    """``||W_end - W0||_F / ||W0||_F`` over each group's parameters (a group whose W0 is all zero: the
    absolute change instead, so it is still 0 exactly when nothing moved)."""
    drift = {}
    for group, names in groups.items():
        diff = sum(float((end[n] - start[n]).pow(2).sum()) for n in names) ** 0.5
        norm = sum(float(start[n].pow(2).sum()) for n in names) ** 0.5
        drift[group] = diff / norm if norm > 0 else diff
    return drift


def block_groups(net: nn.Module, groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each block with all parameters under it (its layers' groups merged)."""
    return {
        block: [p for name, params in groups.items() if name.startswith(block + ".") for p in params]
        for block in block_names(net)
    }


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n examples, [n, d1] and
    [n, d2]: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred X, Y. NaN if either
    representation is constant."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / denom) if denom > 0 else float("nan")


def ridge_probe_accuracy(
    fit_x: torch.Tensor,
    fit_y: torch.Tensor,
    score_x: torch.Tensor,
    score_y: torch.Tensor,
    num_classes: int,
    ridge: float,
) -> float:
    """Accuracy of a closed-form ridge regression onto one-hot labels (features standardised on the fit
    half, penalty ``ridge`` x feature count, bias unpenalised), fit on one half of the probe set and scored on
    the other. Closed form rather than an iterative solver: exact, deterministic and one solve per layer."""
    fit_x, score_x = fit_x.double(), score_x.double()
    mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-12)
    a, b = (fit_x - mean) / std, (score_x - mean) / std
    targets = nn.functional.one_hot(fit_y, num_classes).double()
    offset = targets.mean(0)
    n, d = a.shape
    ridge = ridge * d  # relative to the mean squared norm of a standardised feature vector: the same for any width
    if d <= n:
        w = torch.linalg.solve(a.T @ a + ridge * torch.eye(d, dtype=a.dtype), a.T @ (targets - offset))
    else:  # dual form: the n x n system is the smaller one
        w = a.T @ torch.linalg.solve(a @ a.T + ridge * torch.eye(n, dtype=a.dtype), targets - offset)
    return float(((b @ w + offset).argmax(1) == score_y).double().mean())


def patch_distances(grid: tuple[int, int], patch_px: tuple[float, float]) -> torch.Tensor:
    """Euclidean distance in input pixels between the centres of every pair of patches, [P, P]."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * patch_px[0], cols.flatten() * patch_px[1]], dim=1).double()
    return torch.cdist(centres, centres)


def mean_attention_distance(attn: torch.Tensor, num_prefix_tokens: int, distances: torch.Tensor) -> torch.Tensor:
    """Mean attention distance per image and head (Dosovitskiy et al. 2021, Fig. 7): for each patch query,
    the distance to the patch keys weighted by its attention (renormalised over patch keys), averaged over
    queries. ``attn`` [B, H, T, T] -> [B, H] pixels."""
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:].double()
    # One contraction, no [B, H, P, P] product: 2.4x faster than (a * distances).sum(-1) at 224 px.
    return (torch.einsum("bhqk,qk->bhq", a, distances) / a.sum(-1)).mean(-1)


def cls_entropy(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Entropy (nats) of the CLS query's attention over patch tokens (renormalised): [B, H, T, T] -> [B, H]."""
    p = attn[..., 0, num_prefix_tokens:].double()
    p = p / p.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@dataclass
class ProbeFeatures:
    """What one forward pass of the probe set recorded, per representation layer and overall."""

    cls: dict[str, torch.Tensor] = field(default_factory=dict)  # ViT: CLS token; ResNet: GAP of the stage output
    patch_mean: dict[str, torch.Tensor] = field(default_factory=dict)  # ViT only: mean over patch tokens
    attention_distance: dict[str, torch.Tensor] = field(default_factory=dict)  # [N, heads] pixels
    attention_entropy: dict[str, torch.Tensor] = field(default_factory=dict)  # [N, heads] nats
    final: torch.Tensor | None = None  # the classifier's input [N, D]


def probe_pass(
    net: nn.Module, batches: list[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor]
) -> ProbeFeatures:
    """One eval-mode forward pass over ``batches`` (uint8 images; ``prepare`` turns them into the net's
    input) with hooks that reduce each batch at once: block/stage representations, attention statistics
    (ViT) and the classifier's input. No hooks or unfused flags are left behind."""
    layers = representation_layers(net)
    modules = dict(net.named_modules())
    attn = attention_layers(net)
    prefix = int(getattr(net, "num_prefix_tokens", 0))
    grid = tuple(int(g) for g in net.patch_embed.grid_size) if attn else None
    final: list[torch.Tensor] = []
    pre = classifier(net)[1].register_forward_pre_hook(lambda _m, args: final.append(args[0].detach().double().cpu()))
    out = ProbeFeatures()
    parts: dict[str, list[torch.Tensor]] = {}

    def keep(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.detach().double().cpu())

    hooked = {name: modules[name] for name in layers} | {name: m.attn_drop for name, m in attn}
    try:
        with torch.no_grad(), evaluating(net), unfused([m for _, m in attn]), capture_outputs(hooked) as captured:
            for images in batches:
                x = prepare(images)
                net(x)
                if grid:
                    distances = patch_distances(grid, (x.shape[-2] / grid[0], x.shape[-1] / grid[1]))
                for name in layers:
                    [h] = captured[name]
                    if h.ndim == 3:  # tokens [B, T, D]
                        keep(f"cls/{name}", h[:, 0])
                        keep(f"patch/{name}", h[:, prefix:].mean(1))
                    else:  # feature map [B, C, H, W]
                        keep(f"cls/{name}", h.mean((2, 3)))
                for name, _ in attn:
                    [a] = captured[name]
                    block = name.removesuffix(".attn")
                    keep(f"dist/{block}", mean_attention_distance(a.cpu(), prefix, distances))
                    keep(f"ent/{block}", cls_entropy(a.cpu(), prefix))
                for maps in captured.values():
                    maps.clear()
    finally:
        pre.remove()
    stores = {"cls": out.cls, "patch": out.patch_mean, "dist": out.attention_distance, "ent": out.attention_entropy}
    for key, values in parts.items():
        kind, name = key.split("/", 1)
        stores[kind][name] = torch.cat(values)
    out.final = torch.cat(final)
    return out
