"""Exact trainable-parameter counts per strategy (10 classes), and the strategy rules."""

import pytest

from gnr650.finetune.strategies import (
    StrategyError,
    apply_freeze,
    count_params,
    trainable_modules,
)
from gnr650.models import build_resnet18, build_vit

STRATEGIES = {"last": (0, True), "top4": (4, True), "full": ("all", True), "frozen": (0, False)}
EXPECTED = {
    ("vit_base_patch16_224", 224): {"last": 7_690, "top4": 28_360_714, "full": 85_806_346, "frozen": 0},
    ("vit_tiny_patch16_224", 224): {"last": 1_930, "top4": 1_781_770, "full": 5_526_346, "frozen": 0},
    ("vit_tiny_patch16_224", 64): {"full": 5_491_786},
    ("resnet18", None): {"last": 5_130, "top4": 10_498_570, "full": 11_181_642, "frozen": 0},
}


def _build(arch, img_size):
    if arch == "resnet18":
        return build_resnet18(10)
    return build_vit(10, arch, img_size=img_size, pretrained=False)


@pytest.mark.parametrize("arch,img_size", list(EXPECTED))
def test_exact_trainable_counts(arch, img_size):
    built = _build(arch, img_size)
    for strategy, expected in EXPECTED[(arch, img_size)].items():
        apply_freeze(built.net, trainable_modules(built, *STRATEGIES[strategy]))
        assert count_params(built.net)["trainable"] == expected, strategy


def test_top4_names_match_the_issue():
    vit = build_vit(10, "vit_tiny_patch16_224", img_size=32, pretrained=False)
    assert trainable_modules(vit, 4) == [
        "blocks.8",
        "blocks.9",
        "blocks.10",
        "blocks.11",
        "norm",
        "fc_norm",
        "head_drop",
        "head",
    ]
    assert trainable_modules(build_resnet18(10), 4) == ["layer3.0", "layer3.1", "layer4.0", "layer4.1", "fc"]


def test_general_k_blocks():
    built = build_resnet18(10)
    apply_freeze(built.net, trainable_modules(built, 2))
    assert count_params(built.net)["trainable"] == sum(p.numel() for p in built.net.layer4.parameters()) + 5_130


@pytest.mark.parametrize(
    "blocks,head,message",
    [
        (9, True, "has only 8 blocks"),
        (-1, True, "integer from 0 to 8"),
        ("some", True, "'all' or an integer"),
        (2, False, "train_head=true"),
        ("all", False, "finetune=frozen"),
    ],
)
def test_impossible_strategies_are_refused(blocks, head, message):
    with pytest.raises(StrategyError, match=message):
        trainable_modules(build_resnet18(10), blocks, head)
