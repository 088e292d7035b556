"""Layer-wise learning-rate decay (BEiT, MAE): the deeper a parameter, the closer its lr to the full one.

Block i of n (from 0) learns at ``decay ** (n - i)`` of ``lr_backbone``; the stem and embeddings (and
anything outside the blocks, neck and head) at ``decay ** (n + 1)``, the smallest; the neck at 1 and
the head at ``lr_head``. On a timm ViT these are timm's ``param_groups_layer_decay`` scales except for
the final norm, which timm groups with the last block (0.75) and BEiT/MAE with the head (1, kept here);
written over ``BuiltModel.blocks`` because timm's helper needs a timm ``group_matcher`` (ResNet has none).
"""

from __future__ import annotations

from gnr650.finetune.strategies import StrategyError, is_under
from gnr650.models import BuiltModel


def layer_decay_scales(built: BuiltModel, decay: float) -> dict[str, float]:
    """The lr scale of every parameter of ``built.net``, by name."""
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
        raise StrategyError(
            f"finetune.layer_decay must be in (0, 1] (got {decay!r}): 1 is plain full fine-tuning, "
            "0.75 the BEiT/MAE setting."
        )
    n = len(built.blocks)

    def depth(name: str) -> int:
        if is_under(name, built.head + built.neck):
            return n + 1
        return next((i + 1 for i, block in enumerate(built.blocks) if is_under(name, built.block_modules([block]))), 0)

    return {name: float(decay) ** (n + 1 - depth(name)) for name, _ in built.net.named_parameters()}
