"""The strategy zoo (bitfit, norm, lora, llrd, vpt, first1, lpft): exact counts, exactly the declared parameters
train, bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from gnr650.finetune import StrategyError, count_params, prepare_from_config, prepare_strategy
from gnr650.finetune.feature_cache import cut_network
from gnr650.finetune.lora import merge_lora
from gnr650.finetune.strategies import apply_freeze, evaluating, is_under, set_mode
from gnr650.interpret.attention import cls_attention, extract_attention, patch_grid, patch_maps
from gnr650.models import build_resnet18, build_vit
from gnr650.training.optim import warmup_cosine_optimizer
from tests.helpers import make_cfg, optimizer_settings

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["attn.qkv"]}
ZOO = {
    "bitfit": {"train_params": "bias"},
    "norm": {"train_params": "norm"},
    "lora": {"lora": LORA},
    "vpt": {"vpt": {"tokens": 10, "deep": False}},
    "vpt_deep": {"vpt": {"tokens": 10, "deep": True}},
    "llrd": {"train_blocks": "all", "layer_decay": 0.75},
    "first1": {"train_blocks": 1, "blocks_from": "bottom"},
    "lpft": {"train_blocks": "all", "lp_epochs": 1},  # the fine-tuning phase's: everything
}
ARCHS = {"vit_ti16": "vit_tiny_patch16_224", "vit_b16": "vit_base_patch16_224"}
# first1, ViT at 224 px: patch embedding 3 * 16**2 * d + d, CLS token d, position embedding 197 * d, one block
# 12 * d**2 + 13 * d, head 10 * d + 10 (d = 192, 768); ResNet-18: conv1 9,408, bn1 128, layer1.0 73,984, fc 5,130.
EXPECTED = {
    "vit_ti16": {
        "bitfit": 27_658,
        "norm": 11_530,
        "lora": 75_658,
        "vpt": 3_850,
        "vpt_deep": 24_970,
        "first1": 632_458,
        "lpft": 5_526_346,
    },
    "vit_b16": {
        "bitfit": 110_602,
        "norm": 46_090,
        "lora": 302_602,
        "vpt": 15_370,
        "vpt_deep": 99_850,
        "first1": 7_838_218,
        "lpft": 85_806_346,
    },
    "resnet18": {"bitfit": 9_930, "norm": 14_730, "first1": 88_650, "lpft": 11_181_642},
}
# What first1 trains, as parameter-name prefixes: the stem, the first block, the head.
FIRST1 = {
    "vit_ti16": ("patch_embed.", "cls_token", "pos_embed", "blocks.0.", "head."),
    "resnet18": ("conv1.", "bn1.", "layer1.0.", "fc."),
}
NORMS = (nn.LayerNorm, nn.BatchNorm2d)
HP = optimizer_settings(lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=0.0)


def _build(model, img_size=32):
    return (
        build_resnet18(10) if model == "resnet18" else build_vit(10, ARCHS[model], img_size=img_size, pretrained=False)
    )


def _prepare(built, strategy):
    kwargs = dict(ZOO[strategy])
    return prepare_strategy(built, kwargs.pop("train_blocks", 0), True, **kwargs)


@pytest.mark.parametrize("model", list(EXPECTED))
def test_exact_trainable_counts(model):
    for strategy, expected in EXPECTED[model].items():
        with torch.device("meta"):  # shapes only: counting needs no initialised weights
            built = _build(model, img_size=224)  # the README's counts: the position embedding's size depends on it
            apply_freeze(built.net, _prepare(built, strategy).trainable)
        assert count_params(built.net)["trainable"] == expected, strategy


@pytest.mark.parametrize("model,expected", [("vit_ti16", 5_526_346), ("vit_b16", 85_806_346)])
def test_llrd_trains_everything(model, expected):
    with torch.device("meta"):
        built = _build(model, img_size=224)  # the position embedding's size depends on img_size
        apply_freeze(built.net, _prepare(built, "llrd").trainable)
    assert count_params(built.net)["trainable"] == expected


@pytest.fixture(scope="module")
def vit_ti():
    """One randomly initialised ViT-Ti/16 at 32 px; tests take copies (timm's initialisation takes seconds)."""
    torch.manual_seed(0)
    return _build("vit_ti16")


def _declared(net: nn.Module, strategy: str) -> set[str]:
    """The parameters each strategy says it trains, from its definition (not from requires_grad)."""
    names = {n for n, _ in net.named_parameters()}
    norm_params = {
        f"{m}.{p}" for m, mod in net.named_modules() if isinstance(mod, NORMS) for p, _ in mod.named_parameters()
    }
    head = {n for n in names if n.startswith(("head.", "fc."))}
    return {
        "bitfit": {n for n in names if n.endswith(".bias")} | head,
        "norm": norm_params | head,
        "lora": {n for n in names if ".lora_A." in n or ".lora_B." in n} | head,
        "vpt": {"blocks.prompts"} | head,
        "vpt_deep": {"blocks.prompts"} | head,
        "llrd": names,
        "first1": {n for n in names if n.startswith(FIRST1["vit_ti16"])},
        "lpft": names,
    }[strategy]


def _step(built, plan, x):
    """One AdamW step of the training path (freeze, modes, parameter groups) on fixed labels."""
    apply_freeze(built.net, plan.trainable)
    set_mode(built.net, plan.trainable, True)
    optimizer, _ = warmup_cosine_optimizer(built.net, built.head, HP, 10, 1, torch.device("cpu"), plan.lr_scales)
    F.cross_entropy(built.net(x), torch.arange(len(x)) % 10).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "model,strategy",
    [("vit_ti16", s) for s in ZOO] + [("resnet18", "bitfit"), ("resnet18", "norm")],
)
def test_one_step_changes_only_the_declared_parameters(model, strategy, vit_ti):
    """Every other parameter and every BatchNorm statistic stays bit-identical (BN layers stay in eval mode)."""
    torch.manual_seed(0)
    built = copy.deepcopy(vit_ti) if model == "vit_ti16" else _build(model)
    with torch.no_grad():  # statistics unlike a fresh layer's, so that a reset would show as well as an update
        for m in built.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.9, 1.1)
    plan = _prepare(built, strategy)  # adapters and prompts exist from here on
    before = {k: v.clone() for k, v in built.net.state_dict().items()}
    _step(built, plan, torch.randn(4, 3, 32, 32))
    changed = {k for k, v in built.net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == _declared(built.net, strategy)


@pytest.mark.parametrize("model", list(FIRST1))
def test_first1_trains_the_stem_the_first_block_and_the_head_and_nothing_else(model, vit_ti):
    """Surgical fine-tuning's names, from the parameter-name prefixes: after a few steps everything else is
    bit-identical, BatchNorm statistics included (ResNet's trained stem and first block update theirs)."""
    torch.manual_seed(0)
    built = copy.deepcopy(vit_ti) if model == "vit_ti16" else _build(model)
    plan = _prepare(built, "first1")
    apply_freeze(built.net, plan.trainable)
    expected = {n for n, _ in built.net.named_parameters() if n.startswith(FIRST1[model])}
    assert {n for n, p in built.net.named_parameters() if p.requires_grad} == expected
    set_mode(built.net, plan.trainable, True)
    optimizer, _ = warmup_cosine_optimizer(built.net, built.head, HP, 10, 1, torch.device("cpu"))
    before = {k: v.clone() for k, v in built.net.state_dict().items()}
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(built.net(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
        optimizer.step()
    changed = {k for k, v in built.net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.startswith(FIRST1[model])}


def test_blocks_from_must_be_top_or_bottom():
    with torch.device("meta"), pytest.raises(StrategyError, match=r"blocks_from must be top .* or bottom .*'middle'"):
        prepare_strategy(_build("vit_ti16"), 1, True, blocks_from="middle")


@pytest.mark.parametrize(
    "settings",
    [
        {"train_blocks": 0},
        {"train_blocks": 0, "lora": LORA},  # the adapters train in the probe too, at lr_head with the head
        {"train_blocks": 0, "train_head": False, "train_params": "bias"},
    ],
)
def test_lp_epochs_need_a_probed_head_and_more_to_fine_tune(settings, vit_ti):
    built = copy.deepcopy(vit_ti)
    with pytest.raises(StrategyError, match="leave nothing beyond the head to fine-tune.*finetune=lpft: all"):
        prepare_strategy(built, lp_epochs=1, **settings)
    assert set(built.net.state_dict()) == set(vit_ti.net.state_dict())  # refused before adapters were added


def test_merged_lora_gives_the_adapted_logits(vit_ti):
    built = copy.deepcopy(vit_ti)
    plan = _prepare(built, "lora")
    x = torch.randn(4, 3, 32, 32)
    with evaluating(built.net):
        base = built.net(x)
    _step(built, plan, x)  # lora_B starts at zero: one step makes the adapters count
    with evaluating(built.net):
        adapted = built.net(x)
        merged_net = merge_lora(copy.deepcopy(built.net))
        merged = merged_net(x)
    assert not torch.allclose(adapted, base, atol=1e-5)
    assert all(type(m.attn.qkv) is nn.Linear for m in merged_net.blocks)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "lora,message",
    [
        ({**LORA, "r": 0}, "lora.r must be a positive integer"),
        ({**LORA, "r": -2}, "lora.r must be a positive integer"),
        ({**LORA, "targets": ["attn.qkv", "attn.kv"]}, "attn.kv is not.*valid targets: attn.qkv, attn.proj, mlp.fc1"),
    ],
)
def test_bad_lora_settings_are_refused_before_the_model_changes(lora, message, vit_ti):
    built = copy.deepcopy(vit_ti)
    with pytest.raises(StrategyError, match=message):
        prepare_strategy(built, 0, True, lora=lora)
    assert set(built.net.state_dict()) == set(vit_ti.net.state_dict())


@pytest.mark.parametrize("strategy,message", [("lora", "adapts linear layers inside the blocks"), ("vpt", "vit_ti16")])
def test_vit_only_strategies_refuse_resnet_naming_the_models(strategy, message):
    with torch.device("meta"), pytest.raises(StrategyError, match=message):
        _prepare(build_resnet18(10), strategy)


@pytest.mark.parametrize("tokens", [0, -1])
def test_vpt_needs_tokens(tokens):
    with torch.device("meta"), pytest.raises(StrategyError, match="vpt.tokens must be a positive integer"):
        prepare_strategy(_build("vit_ti16"), 0, True, vpt={"tokens": tokens, "deep": False})


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_prompts_stay_out_of_the_patch_grid_and_the_cache_is_exact(deep, vit_ti):
    built = copy.deepcopy(vit_ti)
    plan = prepare_strategy(built, 0, True, vpt={"tokens": 3, "deep": deep})
    x = torch.randn(2, 3, 32, 32)
    attn, _ = extract_attention(built.net, x)
    assert attn.shape[-1] == 1 + 3 + 4  # CLS, prompts, the 2 x 2 patches
    assert built.net.num_prefix_tokens == 4
    maps = patch_maps(cls_attention(attn), built.net.num_prefix_tokens, patch_grid(built.net))
    assert maps.shape[-2:] == (2, 2)
    cut = cut_network(built.net, plan.trainable)  # the prompts join at block 0: the embeddings can be cached
    assert cut.at == "blocks.0" and built.net.blocks.prompts.shape == (12 if deep else 1, 3, 192)
    with evaluating(built.net):
        before = built.net(x)
        torch.testing.assert_close(cut.suffix(cut.prefix(x)), before, atol=0, rtol=0)
        built.net.blocks.prompts[-1].add_(1.0)  # deep: the last block's own prompts, which must be used too
        assert not torch.equal(built.net(x), before)


def test_llrd_learning_rates_follow_the_formula_and_match_timm(vit_ti):
    from timm.optim._param_groups import param_groups_layer_decay

    built = copy.deepcopy(vit_ti)
    plan = _prepare(built, "llrd")
    apply_freeze(built.net, plan.trainable)
    optimizer, _ = warmup_cosine_optimizer(built.net, built.head, HP, 10, 1, torch.device("cpu"), plan.lr_scales)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    n, decay = 12, 0.75
    for name, p in built.net.named_parameters():
        if name.startswith("head."):
            expected = HP.lr_head
        elif name.startswith("blocks."):
            expected = HP.lr_backbone * decay ** (n - int(name.split(".")[1]))
        elif name.startswith("norm."):
            expected = HP.lr_backbone
        else:
            assert name.split(".")[0] in ("cls_token", "pos_embed", "patch_embed"), name
            expected = HP.lr_backbone * decay ** (n + 1)
        assert lr_of[id(p)] == pytest.approx(expected, rel=1e-12), name
    timm_scale = {
        id(p): g["lr_scale"] for g in param_groups_layer_decay(built.net, layer_decay=decay) for p in g["params"]
    }
    # timm groups the final norm with the last block (scale 0.75); BEiT and MAE give it the head's depth (1).
    timm_scales = {
        n: timm_scale[id(p)] / (decay if n.startswith("norm.") else 1) for n, p in built.net.named_parameters()
    }
    assert timm_scales == pytest.approx(plan.lr_scales, rel=1e-12)


@pytest.mark.parametrize("decay", [0, -0.5, 1.5, "0.75"])
def test_layer_decay_outside_zero_one_is_refused(decay):
    with torch.device("meta"), pytest.raises(StrategyError, match=r"layer_decay must be in \(0, 1\]"):
        prepare_strategy(_build("vit_ti16"), "all", True, layer_decay=decay)


@pytest.mark.parametrize("decay", [1, 1.0])
def test_layer_decay_of_one_is_plain_full_fine_tuning(decay):
    with torch.device("meta"):
        plan = prepare_strategy(_build("vit_ti16"), "all", True, layer_decay=decay)
    assert set(plan.lr_scales.values()) == {1.0}


# ViT-Ti/16 at 224 px, 10 classes: head 192 * 10 + 10 = 1_930; LoRA r=8 on qkv: 12 * 8 * (192 + 576) = 73_728;
# prompts 10 * 192 (shallow) or 12 * 10 * 192 (deep).
CONFIG_COUNTS = {
    "last": (1_930, 0),
    "top4": (1_781_770, 0),
    "full": (5_526_346, 0),
    "frozen": (0, 0),
    "knn": (0, 0),
    "bitfit": (27_658, 0),
    "norm": (11_530, 0),
    "lora": (1_930 + 73_728, 73_728),
    "vpt": (1_930 + 1_920, 1_920),
    "vpt_deep": (1_930 + 23_040, 23_040),
    "llrd": (5_526_346, 0),
    "first1": (632_458, 0),
    "lpft": (5_526_346, 0),
}


@pytest.mark.parametrize("finetune", list(CONFIG_COUNTS))
def test_each_finetune_config_prepares_its_trainable_and_new_parameters(finetune, tmp_path):
    """configs/finetune/<name>.yaml as composed: what trains, what of it is new (trained at lr_head), lr scales."""
    ft = OmegaConf.to_container(make_cfg([f"finetune={finetune}"], tmp_path).finetune, resolve=True)
    with torch.device("meta"):
        built = _build("vit_ti16", img_size=224)
        plan = prepare_from_config(built, ft)
    apply_freeze(built.net, plan.trainable)
    new = sum(p.numel() for n, p in built.net.named_parameters() if is_under(n, plan.new))
    assert (count_params(built.net)["trainable"], new) == CONFIG_COUNTS[finetune]
    assert (plan.lr_scales is not None) == (finetune == "llrd")


def test_lora_and_prompts_together_are_both_new_and_the_head_trains_by_default():
    with torch.device("meta"):
        built = _build("vit_ti16", img_size=224)
        plan = prepare_strategy(built, 0, lora=LORA, vpt={"tokens": 10, "deep": False})
    apply_freeze(built.net, plan.trainable)
    new = sum(p.numel() for n, p in built.net.named_parameters() if is_under(n, plan.new))
    assert (count_params(built.net)["trainable"], new) == (1_930 + 73_728 + 1_920, 73_728 + 1_920)


def test_a_finetune_config_without_train_head_trains_the_head():
    """Configs saved before ``train_head`` existed load with the head trained, as every option but frozen does."""
    with torch.device("meta"):
        built = _build("vit_ti16", img_size=224)
        apply_freeze(built.net, prepare_from_config(built, {"train_blocks": 0}).trainable)
    assert count_params(built.net)["trainable"] == 1_930
