"""The "What changed" section and the significance statistics, against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gnr650.interpret.index import append_to_index, entry
from gnr650.summary import collect_jobs, write_summary
from gnr650.summary import significance as sig
from tests.summary.jobs import attention_arrays, make_job


def test_exact_mcnemar_equals_the_hand_computed_binomial():
    # 1 vs 7 discordant images: p = 2 * P(X <= 1), X ~ Binomial(8, 1/2) = 2 * (1 + 8) / 256
    assert sig.mcnemar_exact(1, 7) == pytest.approx(18 / 256, abs=1e-12)
    assert sig.mcnemar_exact(7, 1) == pytest.approx(18 / 256, abs=1e-12)
    assert sig.mcnemar_exact(0, 5) == pytest.approx(2 / 32, abs=1e-12)
    assert sig.mcnemar_exact(4, 4) == 1.0 and sig.mcnemar_exact(0, 0) == 1.0


def test_wilson_interval_and_holm_against_known_values():
    low, high = sig.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 95% Wilson interval of 8/10
    assert sig.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert sig.t_interval([0.5]) is None
    low, high = sig.t_interval([0.7, 0.8, 0.9])
    assert (low + high) / 2 == pytest.approx(0.8) and high - low == pytest.approx(2 * 4.302653 * 0.1 / 3**0.5, rel=1e-5)


def _predictions(job: Path, labels, predicted) -> None:
    artifacts = job / "artifacts"
    artifacts.mkdir(exist_ok=True)
    probs = np.eye(3, dtype=np.float32)[predicted]
    np.savez(
        artifacts / "test_predictions.npz",
        indices=np.arange(len(labels)),
        labels=labels,
        predicted=predicted,
        probabilities=probs,
    )
    append_to_index(artifacts, [entry("test_predictions", "test_predictions.npz", phase="end", epoch=3)])


def test_identical_predictions_give_p_one_and_equal_intervals(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    predicted = np.array([0, 1, 1, 0, 2, 2, 0, 0])
    for num, strategy in enumerate(("last", "frozen")):
        _predictions(make_job(tmp_path, num, ["model=vit_ti16", f"finetune={strategy}"]), labels, predicted)
    preds = sig.load_predictions(collect_jobs(tmp_path))
    [a, b] = sig.accuracy_rows(preds)
    assert (a["low"], a["high"], a["acc"]) == (b["low"], b["high"], b["acc"]) and a["acc"] == 5 / 8
    [pair] = sig.pairwise_rows(preds)
    assert pair["p"] == 1.0 and pair["p_holm"] == 1.0 and not pair["significant"]


def _analysis(job: Path, drift: float, attention_sharpness: float) -> None:
    artifacts = job / "artifacts"
    artifacts.mkdir(exist_ok=True)
    blocks = [f"blocks.{i}" for i in range(3)]
    analysis = {
        "probe_images": 8,
        "epochs": {"start": 0, "end": 2},
        "blocks": blocks,
        "weight_drift": dict.fromkeys(blocks, drift),
        "cka": dict.fromkeys(blocks, 1 - drift),
        "layer_probe": {b: {"start": 0.5, "end": 0.5 + drift} for b in blocks},
        "attention_distance": {b: {"start": [10.0, 12.0], "end": [10.0 + i, 12.0 + i]} for i, b in enumerate(blocks)},
        "attention_entropy": {b: {"start": 2.0, "end": 2.0 + i} for i, b in enumerate(blocks)},
        "faithfulness": {
            "rollout": {"deletion_auc": 0.3 + drift, "insertion_auc": 0.6, "images": 8},
            "gradcam": {"deletion_auc": 0.2, "insertion_auc": 0.7, "images": 8},
            "random": {"deletion_auc": 0.4, "insertion_auc": 0.5, "images": 8},
        },
    }
    (artifacts / "analysis.json").write_text(json.dumps(analysis))
    np.savez(artifacts / "attention.npz", **attention_arrays(attention_sharpness))
    append_to_index(
        artifacts,
        [
            entry("analysis_json", "analysis.json", phase="end", epoch=2),
            entry("attention_npz", "attention.npz", phase="end", epoch=2),
        ],
    )


def test_what_changed_section_in_every_summary_file(tmp_path):
    labels = np.arange(30) % 3
    right = labels.copy()
    wrong = (labels + 1) % 3
    for num, (strategy, drift, predicted) in enumerate(
        (("last", 0.0, right), ("frozen", 0.0, np.where(np.arange(30) < 10, right, wrong)), ("full", 0.5, wrong))
    ):
        job = make_job(tmp_path, num, ["model=vit_ti16", f"finetune={strategy}"], attention=1.0 + num)
        _analysis(job, drift, 1.0)  # last and frozen: the same attention arrays
        _predictions(job, labels, predicted)
    summary = write_summary(tmp_path)
    assert (tmp_path / "what_changed.png").stat().st_size > 0 and tmp_path / "what_changed.png" in summary.files
    data = json.loads((tmp_path / "summary.json").read_text())["what_changed"]
    [first, _, third] = data["observations"]
    assert "max absolute difference" in first and "= 0 (identical" in first
    assert "Full fine-tuning's rollout is the least faithful" in third
    pairs = {(r["a"], r["b"]): r for r in data["pairwise"]}
    last_full = pairs[("finetune=last", "finetune=full")]
    assert (last_full["only_a"], last_full["only_b"]) == (30, 0) and last_full["significant"]
    assert last_full["p"] == pytest.approx(2 * 0.5**30)
    html = (tmp_path / "report.html").read_text()
    for text in ("What changed", "Exact McNemar p", "Holm", "95% Wilson interval", "Deletion AUC", "what_changed.png"):
        assert text in html
    md = (tmp_path / "summary.md").read_text()
    # The exported maps' entropy figure belongs to the section (after its heading), not to the general figures.
    assert "## What changed" in md and md.index("(attention_entropy.png)") > md.index("## What changed")
    assert (tmp_path / "attention_entropy.png") in summary.files
