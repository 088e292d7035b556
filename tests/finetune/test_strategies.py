"""Exact trainable-parameter counts per strategy (10 classes), and the strategy rules."""

import pytest
from torch import nn

from gnr650.finetune.strategies import (
    WHOLE,
    StrategyError,
    apply_freeze,
    count_params,
    parameter_names,
    set_mode,
    trainable_modules,
)
from gnr650.models import BuiltModel, build_resnet18, build_vit

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
        (9, True, r"resnet18 has only 8 blocks \(layer1\.0 \.\. layer4\.1\); use at most 8"),
        (-1, True, "integer from 0 to 8"),
        ("some", True, "'all' or an integer"),
        (2, False, "train_head=true"),
        ("all", False, "finetune.train_blocks=all with finetune.train_head=false .*finetune=frozen"),
    ],
)
def test_impossible_strategies_are_refused(blocks, head, message):
    with pytest.raises(StrategyError, match=message):
        trainable_modules(build_resnet18(10), blocks, head)


def test_train_params_outside_the_choices_is_refused_naming_them():
    with pytest.raises(StrategyError, match=r"train_params must be one of bias, norm or null \(got 'weights'\)"):
        trainable_modules(build_resnet18(10), 0, True, "weights")


def test_every_block_by_number_trains_all_but_the_stem():
    built = build_resnet18(10)
    apply_freeze(built.net, trainable_modules(built, 8))
    stem = sum(p.numel() for n, p in built.net.named_parameters() if n.startswith(("conv1.", "bn1.")))
    counts = count_params(built.net)
    assert stem > 0 and counts["trainable"] == counts["total"] - stem


def _tiny() -> BuiltModel:
    """Stem, two blocks (the second with BatchNorm and dropout), head: 12 + 20 + (20 + 8) + 15 = 75 parameters."""
    net = nn.Sequential()
    net.add_module("stem", nn.Linear(2, 4))
    net.add_module("b0", nn.Linear(4, 4))
    net.add_module("b1", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout()))
    net.add_module("head", nn.Linear(4, 3))
    return BuiltModel("tiny", net, ["b0", "b1"], ["head"])


def test_counts_of_a_hand_sized_network():
    built = _tiny()
    apply_freeze(built.net, trainable_modules(built, 0))
    assert count_params(built.net) == {"total": 75, "trainable": 15}


def test_norm_is_refused_on_a_model_without_normalisation_bias_is_not():
    built = _tiny()
    built.net.b1[1] = nn.Identity()
    with pytest.raises(StrategyError, match="finetune=norm: tiny has no normalisation layers to train"):
        trainable_modules(built, 0, True, "norm")
    assert trainable_modules(built, 0, True, "bias") == ["head", "stem.bias", "b0.bias", "b1.0.bias"]


def test_a_bare_norm_layer_names_its_own_parameters():
    assert parameter_names(nn.LayerNorm(4), "norm") == ["weight", "bias"]


def test_train_mode_only_for_trainable_modules_and_none_in_evaluation():
    """A module name switches its module (and children) to train mode; a parameter name switches nothing."""
    net = _tiny().net
    set_mode(net, ["b1", "b0.bias"], True)
    assert {name for name, m in net.named_modules() if m.training} == {"b1", "b1.0", "b1.1", "b1.2"}
    set_mode(net, ["b1", "b0.bias"], False)
    assert not any(m.training for m in net.modules())
    set_mode(net, [WHOLE], True)
    assert all(m.training for m in net.modules())
