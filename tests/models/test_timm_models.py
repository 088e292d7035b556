"""model=timm: any timm classifier, its blocks, neck and head read from timm (ConvNeXt and Swin, random weights)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from gnr650.finetune import StrategyError, count_params, prepare_strategy
from gnr650.finetune.feature_cache import cut_network
from gnr650.finetune.strategies import apply_freeze, is_under, set_mode
from gnr650.interpret.analysis import representation_layers
from gnr650.interpret.index import ArtifactKind, find_artifacts
from gnr650.models import build_timm, build_vit
from gnr650.train import train
from gnr650.training.optim import warmup_cosine_optimizer
from tests.finetune.test_zoo import HP, LORA
from tests.helpers import make_cfg


def _count(net: nn.Module, modules: list[str]) -> int:
    return sum(p.numel() for m in modules for p in net.get_submodule(m).parameters())


def _stage_blocks(net: nn.Module, stages: nn.Sequential, prefix: str) -> list[str]:
    """Every block of every stage, in order, from the model's own modules (not from group_matcher)."""
    return [f"{prefix}.{s}.blocks.{i}" for s, stage in enumerate(stages) for i in range(len(stage.blocks))]


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return build_timm(10, "convnext_atto", img_size=32, pretrained=False)


@pytest.fixture(scope="module")
def swin():
    with torch.device("meta"):  # counting needs shapes only
        return build_timm(10, "swin_tiny_patch4_window7_224", pretrained=False)


@pytest.mark.parametrize("model", ["convnext", "swin"])
def test_top4_and_last_train_the_counted_modules(model, request):
    built = request.getfixturevalue(model)
    net = built.net
    prefix, stages, neck = (
        ("stages", net.stages, ["head.norm"]) if model == "convnext" else ("layers", net.layers, ["norm"])
    )
    blocks = _stage_blocks(net, stages, prefix)
    # A stage whose first block is among the last 4 brings its downsampling layer (timm groups them).
    downsample = [f"{prefix}.{s}.downsample" for s in range(1, len(stages)) if f"{prefix}.{s}.blocks.0" in blocks[-4:]]
    assert downsample  # both models' last stage has fewer than 4 blocks
    modules = blocks[-4:] + downsample + neck + ["head.fc"]
    assert len(built.blocks) == len(blocks)
    expected = {4: _count(net, modules), 0: net.get_classifier().weight.numel() + net.get_classifier().bias.numel()}
    for train_blocks, count in expected.items():
        b = copy.copy(built)
        apply_freeze(b.net, prepare_strategy(b, train_blocks, True).trainable)
        assert count_params(b.net)["trainable"] == count, (model, train_blocks)


def _declared(net: nn.Module, strategy: str) -> set[str]:
    names = {n for n, _ in net.named_parameters()}
    head = {n for n in names if n.startswith("head.fc.")}
    norms = {f"{m}.{p}" for m, mod in net.named_modules() if isinstance(mod, nn.LayerNorm) for p in ("weight", "bias")}
    top2 = {n for n in names if n.startswith(("stages.3.", "head."))}  # convnext_atto's last stage has 2 blocks
    return {
        "top2": top2,
        "bitfit": {n for n in names if n.endswith(".bias")} | head,
        "norm": norms | head,
        "llrd": names,
    }[strategy]


@pytest.mark.parametrize("strategy", ["top2", "bitfit", "norm", "llrd"])
def test_one_step_changes_only_the_declared_parameters(strategy, convnext):
    built = copy.deepcopy(convnext)
    kwargs = {
        "top2": {"train_blocks": 2},
        "bitfit": {"train_blocks": 0, "train_params": "bias"},
        "norm": {"train_blocks": 0, "train_params": "norm"},
        "llrd": {"train_blocks": "all", "layer_decay": 0.75},
    }[strategy]
    plan = prepare_strategy(built, kwargs.pop("train_blocks"), True, **kwargs)
    apply_freeze(built.net, plan.trainable)
    set_mode(built.net, plan.trainable, True)
    before = {k: v.clone() for k, v in built.net.state_dict().items()}
    optimizer, _ = warmup_cosine_optimizer(built.net, built.head, HP, 10, 1, torch.device("cpu"), plan.lr_scales)
    F.cross_entropy(built.net(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    changed = {k for k, v in built.net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == _declared(built.net, strategy)


def test_llrd_scales_follow_timm_groups(convnext):
    """A stage's downsampling learns with the block timm groups it with; the stem slowest, the neck at 1."""
    plan = prepare_strategy(convnext, "all", True, layer_decay=0.5)
    n = len(convnext.blocks)
    scales = plan.lr_scales
    assert scales["stages.3.downsample.1.weight"] == scales["stages.3.blocks.0.conv_dw.weight"] == 0.5**2
    assert scales["stages.3.blocks.1.conv_dw.weight"] == 0.5
    assert scales["stem.0.weight"] == 0.5 ** (n + 1) and scales["head.norm.weight"] == 1.0


def test_last_caches_pooled_features_exactly(convnext):
    net = copy.deepcopy(convnext.net).eval()
    cut = cut_network(net, ["head.fc"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert cut.at == "head.fc" and torch.equal(cut.suffix(cut.prefix(x)), net(x))


def test_attention_strategies_refused_with_the_valid_choices(convnext):
    with pytest.raises(StrategyError, match="adapts linear layers inside the blocks.*convnext_atto's blocks have none"):
        prepare_strategy(copy.deepcopy(convnext), 0, True, lora=LORA)
    with pytest.raises(StrategyError, match="finetune=vpt needs a timm VisionTransformer"):
        prepare_strategy(copy.deepcopy(convnext), 0, True, vpt={"tokens": 10, "deep": False})


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="not a timm model name.*timm.list_models"):
        build_timm(10, "convnext_typo", pretrained=False)


def test_local_weights_load_all_but_the_classifier(convnext, tmp_path):
    path = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in convnext.net.state_dict().items()}, str(path))
    loaded = build_timm(5, "convnext_atto", pretrained=True, weights_dir=str(tmp_path))
    own, theirs = convnext.net.state_dict(), loaded.net.state_dict()
    assert all(torch.equal(theirs[k], own[k]) for k in theirs if not k.startswith("head.fc."))
    assert theirs["head.fc.weight"].shape == (5, own["head.fc.weight"].shape[1])
    assert loaded.weights == str(path) and loaded.mean == tuple(loaded.net.pretrained_cfg["mean"])


def test_train_composes_and_runs_a_timm_model(tmp_path):
    """Also logger=none beside the default callbacks (the learning-rate monitor is left out, not a crash) and the
    analysis on a timm CNN's feature stages: frozen stages unchanged exactly, trained ones moved."""
    overrides = ["debug=smoke", "model=timm", "model.arch=convnext_atto", "model.pretrained=false", "model.img_size=32"]
    extra = ["finetune=top4", "trainer.max_epochs=1", "logger=none", "callbacks=[default,analysis]"]
    results = train(make_cfg([*overrides, *extra], tmp_path))
    assert results["status"] == "completed" and results["model"] == "convnext_atto"
    assert "stages.3.downsample" in results["trainable_modules"]
    [path] = find_artifacts(tmp_path / "artifacts", ArtifactKind.ANALYSIS_JSON)
    analysis = json.loads(path.read_text())
    assert list(analysis["cka"]) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    for frozen in ("stages.0", "stages.1"):  # top4 = stages.2.blocks.4-5 and stage 3
        assert analysis["weight_drift"][frozen] == 0 and abs(analysis["cka"][frozen] - 1) < 1e-6
    assert analysis["weight_drift"]["stages.2"] > 0 and analysis["weight_drift"]["stages.3"] > 0


def test_analysis_refuses_swin_clearly(swin):
    with pytest.raises(ValueError, match="SwinTransformer is none of them.*callbacks=default"):
        representation_layers(swin.net)


def test_single_block_stages_are_blocks():
    """EfficientNet's one-block stages are whole modules in timm's groups (``blocks.6`` for ``blocks.6.0``)."""
    with torch.device("meta"):
        built = build_timm(10, "efficientnet_b0", pretrained=False)
    assert len(built.blocks) == sum(len(stage) for stage in built.net.blocks)
    assert built.neck == ["conv_head", "bn2"] and built.head == ["classifier"]


@pytest.mark.parametrize(
    "arch,stem,first",
    [
        ("convnext_atto", ["stem"], "stages.0.blocks.0"),
        ("efficientnet_b0", ["conv_stem", "bn1"], "blocks.0"),
        ("swin_tiny_patch4_window7_224", ["patch_embed"], "layers.0.blocks.0"),
        ("vit_tiny_patch16_224", ["cls_token", "pos_embed", "patch_embed"], "blocks.0"),
    ],
)
def test_the_stem_is_what_timm_groups_before_the_first_block_and_first1_trains_it(arch, stem, first):
    """Stem, blocks, neck and head cover every parameter; first1 (blocks_from=bottom) trains the stem, the first
    block and the head. build_vit names the same ViT stem by hand."""
    with torch.device("meta"):
        built = build_timm(10, arch, pretrained=False)
        vit = build_vit(10, arch, pretrained=False) if arch.startswith("vit_") else None
    assert built.stem == stem and built.blocks[0] == first
    parts = built.stem + built.block_modules(built.blocks) + built.neck + built.head
    assert all(is_under(n, parts) for n, _ in built.net.named_parameters())
    assert prepare_strategy(built, 1, True, blocks_from="bottom").trainable == stem + [first] + built.head
    if vit is not None:
        assert set(vit.stem) == set(stem)
