"""Every dataset x model x finetune combination composes and builds, with the strategy's parameters trainable;
shared keys come from one place; every gnr650 ``_target_`` in configs/ is also a name its package exports, so no
code is reachable only from YAML."""

import importlib
import itertools
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_object
from omegaconf import OmegaConf

from gnr650.finetune.strategies import count_params
from gnr650.train import build
from tests.helpers import CONFIG_DIR, finish, make_cfg, tiny_overrides, train_py

DATASETS = ["cifar10-subset", "eurosat", "imagefolder", "synthetic"]
MODELS = ["resnet18", "vit_b16", "vit_ti16"]
FINETUNES = ["last", "top4", "full", "frozen"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def gnr650_targets(node) -> set[str]:
    """Every ``_target_`` naming gnr650 code in a loaded YAML tree (nested mappings and lists)."""
    if isinstance(node, dict):
        found = {node["_target_"]} if str(node.get("_target_", "")).startswith("gnr650.") else set()
        return found.union(*(gnr650_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(gnr650_targets(v) for v in node))
    return set()


CONFIG_TARGETS = sorted(set().union(*(gnr650_targets(yaml.safe_load(p.read_text())) for p in CONFIGS.rglob("*.yaml"))))


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_combination_builds(dataset, fake_data, tmp_path):
    for model, finetune in itertools.product(MODELS, FINETUNES):
        cfg = make_cfg(tiny_overrides(dataset, fake_data) + [f"model={model}", f"finetune={finetune}"], tmp_path)
        dm, built, module = build(cfg)
        assert built.name == model and cfg.finetune.name == finetune
        assert dm.num_classes == module.net(module.preprocess(dm.split("val").images[:2])).shape[1]
        params = count_params(built.net)
        head = sum(p.numel() for n, p in built.net.named_parameters() if n.startswith(built.head[-1] + "."))
        expected = {"last": head, "frozen": 0, "full": params["total"]}
        if finetune in expected:
            assert params["trainable"] == expected[finetune], (dataset, model, finetune)
        else:
            assert head < params["trainable"] < params["total"]


@pytest.mark.parametrize("group,bad", [("model", "vit_l16"), ("dataset", "imagenet"), ("finetune", "top5")])
def test_unknown_group_option_lists_valid_ones(group, bad, tmp_path):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        make_cfg([f"{group}={bad}"], tmp_path)
    valid = {
        "model": ["resnet18", "vit_b16", "vit_ti16"],
        "dataset": ["cifar10-subset", "eurosat"],
        "finetune": ["top4", "frozen"],
    }
    assert all(v in str(err.value) for v in valid[group])


def test_default_config_is_study_two(tmp_path):
    cfg = make_cfg([], tmp_path)
    assert (cfg.dataset._target_.endswith("EuroSATDataModule"), cfg.model.name, cfg.finetune.name) == (
        True,
        "vit_b16",
        "last",
    )


def test_full_size_study_two_is_the_seeds_setting(tmp_path):
    """experiment=eurosat-vit-full: ViT-Ti/16 at 224 px, all of EuroSAT split 60/20/20, 10 epochs, the seed's
    optimiser and batch, precision picked by the hardware, the four strategies as its sweep."""
    cfg = make_cfg(["experiment=eurosat-vit-full"], tmp_path)
    assert (cfg.model.name, cfg.model.img_size, cfg.dataset.fraction, list(cfg.dataset.ratios)) == (
        "vit_ti16",
        224,
        1.0,
        [0.6, 0.2, 0.2],
    )
    assert (cfg.trainer.max_epochs, cfg.batch_size, cfg.trainer.precision) == (10, 128, "auto")
    assert (cfg.optimizer.lr_head, cfg.optimizer.lr_backbone, cfg.optimizer.weight_decay) == (1e-3, 1e-4, 0.05)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        sweep = compose("train", overrides=["experiment=eurosat-vit-full"], return_hydra_config=True)
    assert sweep.hydra.sweeper.params.finetune == "last,top4,full,frozen"


SHARED = {"algorithm": "adamw", "lr_head": 1e-3, "lr_backbone": 1e-4, "weight_decay": 0.05}
RECIPES = {  # each strategy's optimizer, from its paper (configs/recipe/<finetune>.yaml), written out by hand
    "bitfit": {**SHARED, "lr_head": 3e-3, "lr_backbone": 3e-3},
    "norm": {**SHARED, "lr_head": 3e-3, "lr_backbone": 3e-3},
    "lora": SHARED,
    "llrd": {**SHARED, "lr_head": 2.5e-4, "lr_backbone": 2.5e-4},
    "vpt": {"algorithm": "sgd", "lr_head": 0.05, "lr_backbone": 1e-4, "weight_decay": 1e-4},
    "vpt_deep": {"algorithm": "sgd", "lr_head": 0.005, "lr_backbone": 1e-4, "weight_decay": 1e-4},
}


def _optimizer(cfg) -> dict:
    return {key: cfg.optimizer[key] for key in SHARED}


@pytest.mark.parametrize("experiment", [None, "eurosat-vit", "eurosat-vit-strategies", "eurosat-vit-full"])
@pytest.mark.parametrize("finetune", sorted(p.stem for p in (CONFIGS / "finetune").glob("*.yaml")))
def test_each_strategy_trains_at_its_own_recipe_and_the_seeds_four_at_the_shared_one(experiment, finetune, tmp_path):
    """The seed's strategies (and those with nothing of their own to train) keep train.yaml's optimizer; the others
    get their paper's, in every study-2 experiment (an experiment's own optimizer block would hide it)."""
    cfg = make_cfg([f"finetune={finetune}"] + ([f"experiment={experiment}"] if experiment else []), tmp_path)
    assert _optimizer(cfg) == RECIPES.get(finetune, SHARED)
    assert cfg.optimizer.momentum == 0.9


def test_recipe_shared_and_the_command_line_win_over_a_strategys_recipe(tmp_path):
    assert _optimizer(make_cfg(["finetune=bitfit", "recipe=shared"], tmp_path)) == SHARED
    cfg = make_cfg(["finetune=vpt", "optimizer.lr_head=0.5", "experiment=eurosat-vit"], tmp_path)
    assert (cfg.optimizer.algorithm, cfg.optimizer.lr_head) == ("sgd", 0.5)
    study1 = make_cfg(["experiment=overfit-resnet18"], tmp_path)  # study 1 keeps its own rates
    assert (study1.finetune.name, study1.optimizer.lr_head, study1.optimizer.lr_backbone) == ("full", 1e-3, 1e-3)


def test_data_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GNR650_DATA_DIR", str(tmp_path / "somewhere"))
    monkeypatch.setenv("GNR650_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = make_cfg([], tmp_path)
    assert cfg.paths.data_dir == str(tmp_path / "somewhere")
    assert cfg.model.weights_dir == str(tmp_path / "weights")


def _own_keys(path: Path) -> dict:
    """The keys a config file sets itself (its defaults list aside)."""
    data = yaml.safe_load(path.read_text())
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_options_share_their_loader_keys_from_one_base(dataset, tmp_path):
    cfg = make_cfg([f"dataset={dataset}", "batch_size=7", "eval_batch_size=9", "seed=5"], tmp_path)
    composed = OmegaConf.to_container(cfg.dataset, resolve=False)
    own, base = _own_keys(CONFIG_DIR / "dataset" / f"{dataset}.yaml"), _own_keys(CONFIG_DIR / "dataset_base.yaml")
    assert composed == {**base, **own}
    assert set(base) == {
        "augment",
        "crop_padding",
        "batch_size",
        "eval_batch_size",
        "seed",
        "cache_dir",
        "storage",
        "memory_budget_gb",
        "decode_size",
        "devices",
        "skip_unreadable",
    }
    resolved = cfg.dataset
    assert (resolved.batch_size, resolved.eval_batch_size, resolved.seed) == (7, 9, 5)
    assert resolved.cache_dir == cfg.paths.cache_dir and resolved.crop_padding == 4
    assert resolved.augment is (dataset == "cifar10-subset")


@pytest.mark.parametrize(
    "finetune,train_blocks,train_head",
    [("last", 0, True), ("top4", 4, True), ("full", "all", True), ("frozen", 0, False)],
)
def test_finetune_options_take_the_cache_settings_from_the_schema(finetune, train_blocks, train_head, tmp_path):
    composed = OmegaConf.to_container(make_cfg([f"finetune={finetune}"], tmp_path).finetune)
    assert {k: composed[k] for k in ("name", "train_blocks", "train_head", "cache_features", "cache_max_gb")} == {
        "name": finetune,
        "train_blocks": train_blocks,
        "train_head": train_head,
        "cache_features": "auto",
        "cache_max_gb": 16.0,
    }
    assert (composed["lora"], composed["vpt"], composed["knn"], composed["layer_decay"]) == (None, None, None, None)


def test_config_targets_are_found_in_nested_nodes_and_lists():
    assert {"gnr650.summary.SummaryCallback", "gnr650.runs.LocalCheckpointIO", "gnr650.models.build_vit"} <= set(
        CONFIG_TARGETS
    )


@pytest.mark.parametrize("target", CONFIG_TARGETS)
def test_config_target_is_exported_by_its_package(target):
    """``gnr650.interpret.KernelNormExport``: a package (not one of its modules) that lists the name in __all__."""
    package_name, _, name = target.rpartition(".")
    package = importlib.import_module(package_name)
    assert hasattr(package, "__path__"), f"{target}: name the package {package_name.rsplit('.', 1)[0]}, not a module"
    assert name in package.__all__, f"{target}: add {name} to {package_name}.__all__"
    assert getattr(package, name) is get_object(target)


@pytest.mark.slow  # a whole `python train.py --help` process (~1 s: it imports no torch); in the tier .ci/run also runs
def test_help_lists_the_groups_a_user_picks(tmp_path):
    """``train.py --help`` lists every option folder of configs/ (hydra's own aside) with its options, and no
    internal part (the shared dataset keys, the finetune schema) as if it were a choice."""
    out = finish(train_py(["--help"], tmp_path))
    section = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line)
    folders = sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    assert listed == {p.name: ", ".join(sorted(f.stem for f in p.glob("*.yaml"))) for p in folders}
