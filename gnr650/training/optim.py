"""The optimizer of every run: AdamW (or SGD with momentum, VPT's) with a head and a backbone learning rate,
warm-up then cosine decay.

One definition, used by the LightningModule and by the benchmark's plain loop, so the two train alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from gnr650.errors import UserError
from gnr650.finetune.strategies import is_under

ALGORITHMS = ("adamw", "sgd")


class OptimizerSettingError(ValueError, UserError):
    """An ``optimizer`` setting this module cannot build."""


def check_algorithm(algorithm: str) -> None:
    """Refuse an unknown ``optimizer.algorithm`` before any data is read."""
    if algorithm not in ALGORITHMS:
        raise OptimizerSettingError(
            f"optimizer.algorithm={algorithm!r} is not one of {', '.join(ALGORITHMS)} (sgd: with optimizer.momentum, "
            "as VPT trains its prompts)."
        )


def warmup_cosine_optimizer(
    net: nn.Module,
    head: list[str],
    hp: Any,
    total_steps: int,
    epochs: int,
    device: torch.device,
    lr_scales: Mapping[str, float] | None = None,
    weight_decays: Mapping[str, float] | None = None,
    backbone_start_epoch: int = 0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``hp.algorithm`` (``adamw`` or ``sgd``) over ``net``'s trainable parameters and its per-step schedule.

    ``hp`` holds ``algorithm``, ``lr_head``, ``lr_backbone``, ``weight_decay``, ``betas`` (AdamW), ``momentum``
    (SGD), ``warmup_epochs`` and ``min_lr_ratio`` (the ``optimizer`` config). ``head`` modules use ``lr_head``, the rest
    ``lr_backbone``; biases and norms (parameters of fewer than 2 dimensions) get no weight decay.
    ``lr_scales`` (by parameter name, e.g. layer-wise decay from ``gnr650.finetune``) multiply those rates;
    ``weight_decays`` (by name) replace ``weight_decay`` for those parameters (a grid of heads).
    ``backbone_start_epoch``: the backbone's warm-up and cosine start at this epoch, its lr 0 before (LP-FT's
    probe phase); the head's run over every step.
    """
    scales, decays = lr_scales or {}, weight_decays or {}
    groups: dict[tuple[str, bool, float, float], list[nn.Parameter]] = {}
    for name, p in net.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2
            wd = decays.get(name, hp.weight_decay) if decay else 0.0
            key = ("head" if is_under(name, head) else "backbone", decay, wd, scales.get(name, 1.0))
            groups.setdefault(key, []).append(p)
    if not groups:
        raise RuntimeError(
            "No trainable parameters: this strategy has nothing to fit (use finetune=frozen to only evaluate)."
        )
    param_groups = [
        {
            "params": ps,
            "lr": (hp.lr_head if part == "head" else hp.lr_backbone) * scale,
            "weight_decay": wd,
            "name": f"{part}{'' if decay else '_no_decay'}{'' if scale == 1.0 else f'_x{scale:.4g}'}"
            + ("" if not decay or wd == hp.weight_decay else f"_wd{wd:.4g}"),  # unique: LR monitors key on it
        }
        for (part, decay, wd, scale), ps in groups.items()
    ]
    # One fused kernel per step on GPU and CPU: on the CPU the per-tensor loop can cost more than the step's
    # convolutions.
    check_algorithm(hp.algorithm)
    fused = device.type in ("cuda", "cpu")
    if hp.algorithm == "sgd":
        optimizer = torch.optim.SGD(param_groups, momentum=hp.momentum, fused=fused)
    else:
        optimizer = torch.optim.AdamW(param_groups, betas=tuple(hp.betas), fused=fused)
    total = max(1, int(total_steps))
    warmup = int(round(hp.warmup_epochs * total / max(1, epochs or 1)))
    backbone_start = int(round(backbone_start_epoch * total / max(1, epochs or 1)))

    def schedule(start: int) -> Callable[[int], float]:
        """The lr factor at each step: 0 before ``start``, then warm-up and cosine over the steps left."""

        def factor(step: int) -> float:
            step -= start
            if step < 0:
                return 0.0
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - start - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    # Not SequentialLR(LinearLR, CosineAnnealingLR): it matches this to 2e-13 (relative) only with min_lr_ratio=0, as
    # CosineAnnealingLR's eta_min is one absolute lr for all groups (backbone floor 99x off at lr_head/lr_backbone=100)
    # and it rises again after T_max, where this stays at the floor.
    factors = [schedule(0 if part == "head" else backbone_start) for part, *_ in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
