"""A ``finetune`` config made real on a built model: adapters added, the names to train, per-parameter lr scales."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gnr650.finetune.layer_decay import layer_decay_scales
from gnr650.finetune.lora import add_lora
from gnr650.finetune.strategies import StrategyError, is_under, trainable_modules
from gnr650.finetune.vpt import add_prompts
from gnr650.models import BuiltModel


@dataclass
class Strategy:
    """What trains (module or parameter names), what of it is new (adapters, prompts: freshly initialised like
    the head, so trained at the head's rate) and, for layer-wise decay, each parameter's lr scale."""

    trainable: list[str]
    lr_scales: dict[str, float] | None = None
    new: list[str] = field(default_factory=list)


def prepare_strategy(
    built: BuiltModel,
    train_blocks: int | str,
    train_head: bool = True,
    train_params: str | None = None,
    lora: Mapping[str, Any] | None = None,
    vpt: Mapping[str, Any] | None = None,
    layer_decay: float | None = None,
    blocks_from: str = "top",
    lp_epochs: int | None = None,
) -> Strategy:
    """Check the settings, then add ``lora`` adapters / ``vpt`` prompts to ``built.net`` (in place).

    ``lora``: ``r``, ``alpha``, ``dropout``, ``targets``; ``vpt``: ``tokens``, ``deep``; ``layer_decay``
    in (0, 1]. The adapters and prompts train on top of ``train_blocks``/``train_head``/``train_params``, at
    ``lr_head`` (they start from scratch, as the head does). ``blocks_from``: see ``trainable_modules``.
    ``lp_epochs`` (LP-FT, trained by the LightningModule): the head alone trains first, so the strategy must
    train it and more.
    """
    trainable = trainable_modules(built, train_blocks, train_head, train_params, blocks_from)
    if lp_epochs is not None and (not train_head or all(is_under(m, built.head) for m in trainable)):
        raise StrategyError(
            "finetune.lp_epochs (LP-FT) trains the head alone for lp_epochs epochs, then fine-tunes the backbone "
            f"with it, but finetune.train_blocks={train_blocks!r}, train_head={train_head}, "
            f"train_params={train_params!r} leave nothing beyond the head to fine-tune; set finetune.train_head=true "
            "and finetune.train_blocks (finetune=lpft: all), or use finetune=last for the probe alone."
        )
    if layer_decay is not None:
        layer_decay_scales(built, layer_decay)  # checked before the network changes
    new = []
    if lora is not None:
        new += add_lora(built, **lora)
    if vpt is not None:
        new += add_prompts(built, **vpt)
    scales = layer_decay_scales(built, layer_decay) if layer_decay is not None else None
    return Strategy(new + trainable, scales, new)


def prepare_from_config(built: BuiltModel, finetune: Mapping[str, Any]) -> Strategy:
    """``prepare_strategy`` with a resolved ``finetune`` config group; also how a trained run's network gets its
    adapters and prompts back before its checkpoint is loaded."""
    return prepare_strategy(
        built,
        finetune["train_blocks"],
        finetune.get("train_head", True),
        finetune.get("train_params"),
        lora=finetune.get("lora"),
        vpt=finetune.get("vpt"),
        layer_decay=finetune.get("layer_decay"),
        blocks_from=finetune.get("blocks_from", "top"),
        lp_epochs=finetune.get("lp_epochs"),
    )
