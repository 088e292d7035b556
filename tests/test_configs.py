"""Every dataset x model x finetune combination composes and builds, with the strategy's parameters trainable."""

import itertools

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from gnr650.finetune.strategies import count_params
from gnr650.train import build
from tests.helpers import make_cfg, tiny_overrides

DATASETS = ["cifar10-subset", "eurosat", "imagefolder", "synthetic"]
MODELS = ["resnet18", "vit_b16", "vit_ti16"]
FINETUNES = ["last", "top4", "full", "frozen"]


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


def test_data_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GNR650_DATA_DIR", str(tmp_path / "somewhere"))
    monkeypatch.setenv("GNR650_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = make_cfg([], tmp_path)
    assert cfg.paths.data_dir == str(tmp_path / "somewhere")
    assert cfg.model.weights_dir == str(tmp_path / "weights")
