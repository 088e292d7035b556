"""LoRA (Hu et al. 2022): low-rank adapters beside a ViT's linear layers, injected with ``peft``.

``peft.inject_adapter_in_model`` wraps each target ``nn.Linear`` in a ``lora.Linear`` that keeps the
original as ``base_layer`` and adds ``lora_A``/``lora_B``; the network is trained and checkpointed in
that adapted form, so the best checkpoint, resume and the final evaluation all use the adapted model.
``merge_lora`` folds the adapters into plain linear layers (same logits) for export.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from gnr650.finetune.strategies import StrategyError
from gnr650.models import BuiltModel

ADAPTER_PARTS = ("lora_A", "lora_B", "lora_dropout")


def lora_targets(built: BuiltModel) -> list[str]:
    """The linear layers of a block that LoRA can adapt, by their name inside the block (``attn.qkv``)."""
    first = built.net.get_submodule(built.blocks[0])
    return [name for name, m in first.named_modules() if isinstance(m, nn.Linear)]


def add_lora(built: BuiltModel, r: int, alpha: float, dropout: float, targets: Sequence[str]) -> list[str]:
    """Adapt ``targets`` (names inside a block) of every block in ``built.net`` in place; returns the
    names of the adapter modules (the parameters to train; ``lora_dropout`` runs in train mode)."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise StrategyError(f"finetune.lora.r must be a positive integer, the adapters' rank (got {r!r}); e.g. 8.")
    if not 0 <= dropout < 1:
        raise StrategyError(f"finetune.lora.dropout must be in [0, 1) (got {dropout!r}).")
    valid = lora_targets(built)
    if not valid:
        raise StrategyError(
            f"finetune=lora adapts linear layers inside the blocks (model=vit_ti16, vit_b16, or model=timm with a "
            f"ViT, DeiT or Swin); {built.name}'s blocks have none."
        )
    unknown = [t for t in targets if t not in valid]
    if unknown or not targets:
        raise StrategyError(
            f"finetune.lora.targets: {', '.join(map(str, unknown)) or 'empty'} "
            f"{'is not a linear layer' if unknown else 'names no layer'} of {built.name}'s blocks; "
            f"valid targets: {', '.join(valid)}."
        )
    # Imported here: peft imports transformers (~1 s and ~25 MB at start-up), which only LoRA runs need.
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    blocks = "|".join(re.escape(b) for b in built.blocks)
    pattern = rf"({blocks})\.({'|'.join(re.escape(t) for t in targets)})"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    inject_adapter_in_model(config, built.net)
    return [
        f"{name}.{part}" for name, m in built.net.named_modules() if isinstance(m, LoraLayer) for part in ADAPTER_PARTS
    ]


def has_lora(net: nn.Module) -> bool:
    """Whether ``net`` holds adapters (by their parameter names: no need to import peft to know)."""
    return any(".lora_A." in name for name, _ in net.named_parameters())


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layer back in its place (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(net.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, module.get_base_layer())
    return net
