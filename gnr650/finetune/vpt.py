"""Visual prompt tuning (Jia et al. 2022): learnable tokens beside the patch tokens of a frozen ViT.

``add_prompts`` replaces ``net.blocks`` by ``PromptedBlocks``, the same blocks (same names, same
weights) that insert the prompt tokens after the prefix (CLS) tokens before the first block and, when
``deep``, overwrite them with fresh ones before every other block. ``net.num_prefix_tokens`` grows by
the prompt count, so pooling and the attention maps' patch grid (``gnr650.interpret.attention``) skip them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gnr650.finetune.strategies import StrategyError
from gnr650.models import BuiltModel

PROMPTS = "blocks.prompts"  # the parameter's name in the network


class PromptedBlocks(nn.Sequential):
    """Transformer blocks with prompt tokens: ``prompts`` is [1 or depth, tokens, dim]."""

    def __init__(self, blocks: nn.Sequential, tokens: int, dim: int, deep: bool, prefix: int, patch_area: int):
        super().__init__(*blocks)
        self.prefix = prefix
        # Jia et al.'s initialisation: uniform in +-sqrt(6 / (patch fan-in + dim)).
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        self.prompts = nn.Parameter(torch.empty(len(blocks) if deep else 1, tokens, dim).uniform_(-bound, bound))

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` on ``x``, prompts inserted (first block) or replaced (later blocks, deep)."""
        if i == 0:
            prompts = self.prompts[0].expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix :]], dim=1)
        elif i < len(self.prompts):
            tokens = self.prompts.shape[1]
            prompts = self.prompts[i].expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + tokens :]], dim=1)
        return self[i](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self)):
            x = self.run_block(i, x)
        return x


def add_prompts(built: BuiltModel, tokens: int, deep: bool) -> list[str]:
    """Give ``built.net`` (a timm VisionTransformer) ``tokens`` prompts; returns the name of the parameter to train."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise StrategyError(f"finetune.vpt.tokens must be a positive integer (got {tokens!r}); e.g. 10.")
    net = built.net
    if not isinstance(net, VisionTransformer):
        raise StrategyError(
            f"finetune=vpt needs a timm VisionTransformer (model=vit_ti16, vit_b16 or a timm ViT); "
            f"{built.name} is a {type(net).__name__}."
        )
    patch = net.patch_embed.patch_size
    net.blocks = PromptedBlocks(
        net.blocks, tokens, net.embed_dim, bool(deep), net.num_prefix_tokens, patch_area=patch[0] * patch[1]
    )
    net.num_prefix_tokens += tokens
    return [PROMPTS]
