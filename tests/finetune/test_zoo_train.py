"""Every zoo strategy through train(cfg): a completed results.json like the seed's four, the cache where exact."""

import json

import pytest
import torch

from gnr650.finetune.feature_cache import FeatureCacheError
from gnr650.train import train
from tests.helpers import make_cfg

SMOKE = ["debug=smoke", "model=vit_ti16", "trainer.max_epochs=1", "logger=none", "callbacks=none"]


@pytest.fixture(scope="module")
def last_metric_keys(tmp_path_factory):
    return set(train(make_cfg(SMOKE + ["finetune=last"], tmp_path_factory.mktemp("last")))["metrics"])


@pytest.mark.parametrize(
    "strategy,cached_at",
    [
        ("bitfit", None),
        ("norm", "blocks.0"),
        ("lora", "blocks.0"),
        ("vpt", "blocks.0"),
        ("llrd", None),
        ("first1", None),
        ("lpft", None),  # the probe's frozen backbone trains later: nothing to cache
    ],
)
def test_strategy_trains_and_reports_like_the_others(strategy, cached_at, last_metric_keys, tmp_path):
    probe = ["trainer.max_epochs=2"] if strategy == "lpft" else []  # an epoch to probe, one to fine-tune
    results = train(make_cfg(SMOKE + [f"finetune={strategy}", *probe], tmp_path))
    assert results["status"] == "completed" and set(results["metrics"]) == last_metric_keys
    assert 0 < results["params"]["trainable"] <= results["params"]["total"]
    assert (results["feature_cache"] or {}).get("at") == cached_at
    if strategy == "lpft":  # the count of the fine-tuning phase, as results.json and the console header give it
        assert results["params"]["trainable"] == results["params"]["total"]
    if strategy == "lora":  # the best checkpoint (evaluated) holds the adapted model, adapters trained
        state = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        lora_b = [v for k, v in state.items() if ".lora_B." in k]
        assert len(lora_b) == 12 and all(v.abs().sum() > 0 for v in lora_b)


@pytest.mark.parametrize("strategy", ["bitfit", "lpft"])
def test_cache_refused_where_the_embeddings_train(strategy, tmp_path):
    with pytest.raises(FeatureCacheError, match="nothing before the first trainable module is frozen"):
        train(
            make_cfg(SMOKE + [f"finetune={strategy}", "finetune.cache_features=true", "trainer.max_epochs=2"], tmp_path)
        )


@pytest.mark.parametrize("strategy", ["knn", "last_grid"])
def test_strategy_runs_with_the_presets_callbacks_and_logger(strategy, tmp_path):
    """The zoo preset's sweep with its callbacks: the learning-rate monitor needs a distinct name per grid head,
    Grad-CAM backpropagates through the k-NN head (its bank is filled while testing, in inference mode), and the
    shift suite's WiSE curve takes a head whose buffers exist only at the end."""
    analysis = [
        "callbacks=[default,analysis,robustness]",
        "logger=csv",
        "analysis.probe_images=8",
        "analysis.faithfulness_images=2",
        "robustness.shifts=[haze]",
    ]
    results = train(make_cfg(SMOKE[:-2] + [f"finetune={strategy}", *analysis], tmp_path))
    assert results["status"] == "completed"
    analysis_json = json.loads((tmp_path / "artifacts" / "analysis.json").read_text())
    assert set(analysis_json["faithfulness"]) >= {"gradcam", "random"}
    # The backbone did not move (a k-NN head fills its bank only when tested): a flat WiSE curve at the job's accuracy.
    robustness = json.loads((tmp_path / "artifacts" / "robustness.json").read_text())
    assert len(robustness["wise"]) == 5
    assert {p["clean_acc"] for p in robustness["wise"]} == {results["metrics"]["test/acc"]}
