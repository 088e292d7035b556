"""A ``finetune`` config made real on a built model: adapters added, the names to train, per-parameter lr scales."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gnr650.finetune.layer_decay import layer_decay_scales
from gnr650.finetune.lora import add_lora
from gnr650.finetune.strategies import trainable_modules
from gnr650.finetune.vpt import add_prompts
from gnr650.models import BuiltModel


@dataclass
class Strategy:
    """What trains (module or parameter names) and, for layer-wise decay, each parameter's lr scale."""

    trainable: list[str]
    lr_scales: dict[str, float] | None = None


def prepare_strategy(
    built: BuiltModel,
    train_blocks: int | str,
    train_head: bool = True,
    train_params: str | None = None,
    lora: Mapping[str, Any] | None = None,
    vpt: Mapping[str, Any] | None = None,
    layer_decay: float | None = None,
) -> Strategy:
    """Check the settings, then add ``lora`` adapters / ``vpt`` prompts to ``built.net`` (in place).

    ``lora``: ``r``, ``alpha``, ``dropout``, ``targets``; ``vpt``: ``tokens``, ``deep``; ``layer_decay``
    in (0, 1]. The adapters and prompts train on top of ``train_blocks``/``train_head``/``train_params``.
    """
    trainable = trainable_modules(built, train_blocks, train_head, train_params)
    if layer_decay is not None:
        layer_decay_scales(built, layer_decay)  # checked before the network changes
    if lora is not None:
        trainable = add_lora(built, **lora) + trainable
    if vpt is not None:
        trainable = add_prompts(built, **vpt) + trainable
    return Strategy(trainable, layer_decay_scales(built, layer_decay) if layer_decay is not None else None)
