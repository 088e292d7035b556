"""ChangeAnalysis in real (tiny) runs: the exact invariants of the strategies, the outputs and their index,
and that every "end" label names the epoch of the weights shown."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from gnr650.data.splits import class_balanced_subset, stratified_split
from gnr650.interpret.change import DEFAULT_PROBE_IMAGES
from gnr650.interpret.index import ArtifactKind
from gnr650.train import train
from tests.helpers import ROOT, make_cfg

TINY_ANALYSIS = [
    "debug=smoke",
    "logger=csv",
    "analysis.probe_images=16",
    "analysis.faithfulness_images=4",
    "analysis.faithfulness_steps=4",
    "analysis.tsne=false",
]


def _analysis(run_dir) -> dict:
    index = json.loads((run_dir / "artifacts" / "index.json").read_text())
    [path] = [e["path"] for e in index if e["kind"] == ArtifactKind.ANALYSIS_JSON]
    for e in index:
        assert (run_dir / "artifacts" / e["path"]).is_file(), e
    return json.loads((run_dir / "artifacts" / path).read_text())


@pytest.mark.parametrize("strategy", ["frozen", "last", "top4"])
def test_strategy_invariants_on_a_tiny_vit(strategy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gnr650.interpret.change")
    train(
        make_cfg(
            TINY_ANALYSIS
            + ["model=vit_ti16", "trainer.max_epochs=1", "callbacks=[default,analysis]", f"finetune={strategy}"],
            tmp_path,
        )
    )
    result = _analysis(tmp_path)
    drift, cka = result["weight_drift"], result["cka"]
    blocks = [f"blocks.{i}" for i in range(12)]
    assert list(cka) == blocks and result["probe_images"] == 16
    unchanged = blocks if strategy != "top4" else blocks[:8]
    for block in unchanged:
        assert drift[block] == 0.0, block
        assert cka[block] == pytest.approx(1.0, abs=1e-6), block
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"):
            assert drift[f"{block}.{layer}"] == 0.0
    assert drift["patch_embed.proj"] == 0.0 and drift["(root)"] == 0.0
    reused = "end features are the start pass's" in caplog.text  # one pass fewer where only the head moved
    assert reused == (strategy != "top4")
    if strategy == "top4":
        assert all(drift[b] > 0 for b in blocks[8:])
        assert drift["norm"] > 0
    if strategy == "frozen":
        assert all(d == 0.0 for d in drift.values())
        assert result["epochs"] == {"start": 0, "end": 0}
        for block in blocks:
            assert result["attention_distance"][block]["start"] == result["attention_distance"][block]["end"]
            assert result["attention_entropy"][block]["start"] == result["attention_entropy"][block]["end"]
            assert result["layer_probe"][block]["start"] == result["layer_probe"][block]["end"]
    else:
        assert drift["head"] > 0
    assert len(result["attention_distance"]["blocks.0"]["end"]) == 3  # ViT-Ti: 3 heads
    assert set(result["faithfulness"]) == {"rollout", "gradcam", "random"}
    for scores in result["faithfulness"].values():
        assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1


def test_end_labels_name_the_epoch_of_the_weights_shown(tmp_path, caplog):
    """3 epochs, the checkpoint kept is the worst-on-val one (mode=min, ties keep the first): an earlier epoch
    than the last. Every end label must be that checkpoint's epoch, and the kernel norms its weights'."""
    caplog.set_level(logging.INFO, logger="gnr650")
    results = train(
        make_cfg(
            TINY_ANALYSIS
            + [
                "model=resnet18",
                "finetune=full",
                "trainer.max_epochs=3",
                "callbacks=[default,resnet_exports,analysis]",
                "callbacks.model_checkpoint.mode=min",
                "analysis.tsne=true",
            ],
            tmp_path,
        )
    )
    saved = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    weights_epoch = saved["epoch"] + 1  # Lightning stores the 0-based epoch; labels count completed epochs
    assert weights_epoch < results["epochs"] == 3  # otherwise this test could not tell the two apart

    with open(tmp_path / "artifacts" / "kernel_norm_stats.csv") as f:
        end_rows = [r for r in csv.DictReader(f) if r["phase"] == "end"]
    assert end_rows and {int(r["epoch"]) for r in end_rows} == {weights_epoch}
    conv1 = next(r for r in end_rows if r["layer"] == "conv1")
    w = saved["state_dict"]["net.conv1.weight"]
    kernel_norms = [torch.linalg.norm(w[out, i]).item() for out in range(w.shape[0]) for i in range(w.shape[1])]
    assert float(conv1["mean"]) == pytest.approx(sum(kernel_norms) / len(kernel_norms), rel=1e-5)
    # the checkpoint's kernels, not the last epoch's
    with gzip.open(tmp_path / "artifacts" / "kernel_norms.csv.gz", "rt") as f:
        end_conv1 = [float(line.split(",")[5]) for line in f if line.startswith("conv1,") and ",end," in line]
    assert end_conv1 == pytest.approx(kernel_norms, rel=1e-6)

    index = json.loads((tmp_path / "artifacts" / "index.json").read_text())
    end_entries = [e for e in index if "end" in e["path"] or e["kind"] in ("feature_maps", ArtifactKind.ANALYSIS_JSON)]
    assert end_entries and {e["epoch"] for e in end_entries} == {weights_epoch}
    result = _analysis(tmp_path)
    assert result["epochs"] == {"start": 0, "end": weights_epoch}
    assert list(result["cka"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert "attention_distance" not in result and set(result["faithfulness"]) == {"gradcam", "random"}
    kinds = {e["kind"]: e for e in index}
    assert {"tsne_plot", "test_evaluation_plot", "gradcam", "faithfulness_plot", "test_predictions"} <= set(kinds)
    assert kinds["gradcam"]["layer"] == "layer2"  # 32 px input: layer2 is the deepest stage still 4x4

    with np.load(tmp_path / "artifacts" / kinds["test_predictions"]["path"]) as z:
        labels, predicted, probs = z["labels"], z["predicted"], z["probabilities"]
        assert z["indices"].tolist() == list(range(len(labels)))
    assert probs.shape == (len(labels), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == predicted).all()
    assert (predicted == labels).mean() == pytest.approx(results["metrics"]["test/acc"])
    matrix = np.zeros((4, 4), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    assert matrix.tolist() == results["confusion_matrix"]["test"]
    skipped = [r for r in caplog.records if "no attention layers" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.INFO


def test_bad_probe_images_stops_before_the_data_is_built(tmp_path, monkeypatch):
    import gnr650.train as train_module

    built = []
    monkeypatch.setattr(train_module, "build", lambda cfg: built.append(cfg))
    overrides = ["debug=smoke", "model=resnet18", "callbacks=[default,analysis]", "analysis.probe_images=0"]
    with pytest.raises(Exception, match="analysis.probe_images must be a positive number"):
        train(make_cfg(overrides, tmp_path))
    assert not built


# Images per class of the real EuroSAT (its eurosat/2750 folders, Helber et al. 2019): its split sizes without the data.
EUROSAT_IMAGES_PER_CLASS = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]


def test_the_readme_zoo_command_probes_its_val_split_without_a_warning(tmp_path, caplog):
    """The README's zoo command keeps 5% of EuroSAT: fewer validation images than the default probe size. The whole
    split is probed without a warning (nothing for the user to act on); a probe_images set larger still warns."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"`python train.py -m\s+(experiment=eurosat-vit-strategies [^`]*)`", readme)[1].split()
    cfg = make_cfg(command, tmp_path)
    labels = torch.repeat_interleave(torch.arange(10), torch.tensor(EUROSAT_IMAGES_PER_CLASS))
    keep = class_balanced_subset(labels, cfg.dataset.fraction, cfg.dataset.seed)
    val = len(stratified_split(labels[keep], cfg.dataset.ratios, cfg.dataset.seed)[1])
    assert val < DEFAULT_PROBE_IMAGES  # the README's run: 270
    with caplog.at_level(logging.WARNING):
        assert instantiate(cfg.callbacks.analysis).probe_size(val) == val
    assert caplog.records == []

    asked = make_cfg(command + [f"analysis.probe_images={val + 1}"], tmp_path)
    with caplog.at_level(logging.WARNING):
        assert instantiate(asked.callbacks.analysis).probe_size(val) == val
    assert [r.getMessage() for r in caplog.records] == [
        f"analysis.probe_images={val + 1} but the val split has {val} images: using all of them."
    ]
