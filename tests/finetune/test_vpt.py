"""Visual prompts on a small timm ViT (4 x 8 patches): Jia et al.'s initialisation range, where the prompts sit among
the tokens and in which precision, the settings refused with the message a user acts on."""

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gnr650.finetune import StrategyError
from gnr650.finetune.vpt import PromptedBlocks, add_prompts
from gnr650.models import BuiltModel


def _vit() -> BuiltModel:
    net = VisionTransformer(img_size=32, patch_size=(4, 8), embed_dim=16, depth=2, num_heads=2, num_classes=3)
    return BuiltModel("tiny_vit", net, ["blocks.0", "blocks.1"], ["head"])


def test_prompts_start_uniform_within_jias_bound():
    """U(-b, b), b = sqrt(6 / (3 * patch area + dim)) = sqrt(6 / (3 * 4 * 8 + 16)); 2 x 400 x 16 draws."""
    torch.manual_seed(0)
    built = _vit()
    add_prompts(built, tokens=400, deep=True)
    prompts, bound = built.net.blocks.prompts.detach(), math.sqrt(6 / (3 * 32 + 16))
    assert prompts.shape == (2, 400, 16)
    assert -bound <= prompts.min() < -0.99 * bound and 0.99 * bound < prompts.max() <= bound
    assert abs(prompts.mean()) < 0.02 * bound


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_follow_the_prefix_in_the_tokens_precision(deep):
    """Identity blocks show the layout: [CLS, the last inserted prompts, patches], cast to the tokens' dtype (bf16
    under mixed precision)."""
    blocks = PromptedBlocks(nn.Sequential(nn.Identity(), nn.Identity()), 3, 4, deep, prefix=1, patch_area=4)
    x = torch.randn(2, 1 + 5, 4).to(torch.bfloat16)
    out = blocks(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1 + 3 + 5, 4)
    last = blocks.prompts[-1].detach().to(torch.bfloat16).expand(2, -1, -1)
    assert torch.equal(out, torch.cat([x[:, :1], last, x[:, 1:]], dim=1))


def test_one_prompt_token_is_enough():
    built = _vit()
    add_prompts(built, tokens=1, deep=False)
    assert built.net.blocks.prompts.shape == (1, 1, 16) and built.net.num_prefix_tokens == 2


@pytest.mark.parametrize("tokens", [True, 2.5])
def test_tokens_must_be_a_positive_integer(tokens):
    with pytest.raises(StrategyError, match=rf"finetune.vpt.tokens must be a positive integer \(got {tokens}\)"):
        add_prompts(_vit(), tokens=tokens, deep=False)


def test_non_vit_is_refused_naming_its_type():
    built = BuiltModel("tiny_mlp", nn.Sequential(nn.Linear(4, 4)), ["0"], ["0"])
    with pytest.raises(StrategyError, match="needs a timm VisionTransformer .*; tiny_mlp is a Sequential"):
        add_prompts(built, tokens=2, deep=False)
