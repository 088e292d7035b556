"""report.html read back as a reader sees it: every number in its tables equals summary.json / results.json,
it says what was run, its links resolve, attention grids are linked not embedded, and its size stays small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gnr650.interpret.index import append_to_index, artifacts_dir, entry
from gnr650.summary import write_summary
from gnr650.summary.run_report import write_run_report
from tests.helpers import make_cfg
from tests.summary.html_report import parse, table
from tests.summary.jobs import realistic_sweep

ZOO = ["last", "top4", "full", "frozen", "bitfit", "norm", "lora", "llrd", "vpt", "vpt_deep", "knn", "last_grid"]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _resolves(page: Path, href: str) -> bool:
    """A relative link names a file or folder beside the page; in-page anchors name an element id."""
    return href.startswith(("#", "data:")) or (page.parent / href.split("#")[0]).exists()


def _with_predictions(root: Path) -> None:
    """Per-image test predictions for the completed jobs of two_by_two (job n gets 20 + 3n of 40 right)."""
    labels = np.arange(40) % 4
    for num in range(3):
        predicted = np.where(np.arange(40) < 20 + 3 * num, labels, (labels + 1) % 4)
        np.savez(artifacts_dir(root / str(num)) / "test_predictions.npz", labels=labels, predicted=predicted)
        append_to_index(
            artifacts_dir(root / str(num)), [entry("test_predictions", "test_predictions.npz", phase="end")]
        )


def test_every_number_of_the_sweep_results_table_equals_summary_json(two_by_two: Path):
    _with_predictions(two_by_two)
    write_summary(two_by_two)
    summary = json.loads((two_by_two / "summary.json").read_text())
    page = parse((two_by_two / "report.html").read_text())
    rows = table(page, "results-table")
    intervals = {r["run_dir"]: r for r in summary["what_changed"]["accuracy_intervals"]}
    assert [row["Job"] for row in rows] == [record["label"] for record in summary["jobs"]]
    for row, record in zip(rows, summary["jobs"]):
        assert row["Train Accuracy"] == _pct(record["train/acc"])
        assert row["Validation Accuracy"] == _pct(record["val/acc"])
        assert row["Test Accuracy"] == _pct(record["test/acc"])
        shown = intervals.get(record["run_dir"])
        assert row["Test 95% Wilson interval"] == (
            f"{100 * shown['low']:.2f}–{100 * shown['high']:.2f}%" if shown else "—"
        )
        share = 100 * record["trainable_params"] / record["total_params"]
        assert row["Trainable Params"] == f"{record['trainable_params']:,} ({share:.2f}%)"
        assert row["Fit Time"] == f"{record['fit_s']:.1f} s"  # every fake job fits in under a minute
        assert row["Folder"] == f"{Path(record['run_dir']).name}/"
        assert row["Status"].startswith(record["status"])
    # the interval is of the accuracy the table shows: the test accuracy lies inside it
    for record in summary["what_changed"]["accuracy_intervals"]:
        assert record["low"] < record["correct"] / record["images"] < record["high"]
    # every pair of the pairwise table, as summary.json holds it
    [pairs] = [t for t in page.tables if t["rows"][0][0] == "Pair (A vs B)" and len(t["rows"]) == 4]
    for cells, pair in zip(pairs["rows"][1:], summary["what_changed"]["pairwise"]):
        assert cells[:5] == [
            f"{pair['a']} vs {pair['b']}",
            str(pair["only_a"]),
            str(pair["only_b"]),
            f"{pair['p']:.3g}",
            f"{pair['p_holm']:.3g}",
        ]


def test_the_header_says_what_was_run_and_knn_gets_its_caveat(tmp_path: Path):
    realistic_sweep(tmp_path, ["last", "full", "frozen", "knn"], attention=False)
    write_summary(tmp_path)
    html = (tmp_path / "report.html").read_text()
    page = parse(html)
    assert "<title>eurosat-vit: vit_b16 on EuroSAT, 4 jobs sweeping finetune</title>" in html
    for shown in (
        "<dt>Model</dt><dd>vit_b16 (64×64 px, pretrained)</dd>",
        "<dt>Data</dt><dd>EuroSAT; fraction=0.1; 10 classes</dd>",
        "<dt>Split sizes</dt><dd>train 1,620, val 540, test 540</dd>",
        "<dt>Strategies</dt><dd>last, full, frozen, knn</dd>",
        "<dt>Optimizer</dt><dd>AdamW, head 0.001, backbone 0.0001</dd>",
        "<dt>Precision</dt><dd>bf16-mixed</dd>",  # what auto resolved to, as results.json records it
        "<dt>Commit</dt><dd>0123456789 with uncommitted changes</dd>",
        "<dt>Versions</dt><dd>torch 2.5.1, timm 1.0.11, pytorch_lightning 2.4.0, gnr650 0.1.0</dd>",
        "<dt>Machine</dt><dd>Test CPU, 2 cores</dd>",
    ):
        assert shown in html
    statuses = {row["Job"]: row["Status"] for row in table(page, "results-table")}
    assert "memorised" in statuses["finetune=knn"] and "memorised" not in statuses["finetune=frozen"]
    anchors = [href[1:] for href in page.links if href.startswith("#")]
    assert anchors and set(anchors) <= page.ids
    assert all(_resolves(tmp_path / "report.html", href) for href in page.links)
    # per-class test accuracies as each job's results.json holds them
    [per_class] = [t for t in page.tables if t["rows"][0][0] == "Class"]
    jobs = [json.loads((tmp_path / str(n) / "results.json").read_text()) for n in range(4)]
    for cells in per_class["rows"][1:]:
        assert cells[1:] == [_pct(job["per_class"]["test"][cells[0]]) for job in jobs]


def test_attention_grids_are_linked_not_embedded(two_by_two: Path):
    write_summary(two_by_two)
    page = parse((two_by_two / "report.html").read_text())
    linked = {href for href in page.links if href.endswith(".png")}
    grids = sorted(p.name for p in two_by_two.glob("attention_*.png") if p.name != "attention_entropy.png")
    assert grids == ["attention_AnnualCrop.png", "attention_Forest.png"]
    assert set(grids) <= linked  # linked from the Attention section
    figures = {p.name for p in two_by_two.glob("*.png")} - set(grids)
    assert len(page.images) == len(figures)  # every other figure embedded, once
    assert figures <= linked  # and linked to its full-resolution file
    assert not {"attention-annualcrop-png", "attention-forest-png"} & page.ids


def test_single_run_report_equals_results_json(tmp_path: Path):
    from gnr650.train import train

    overrides = [
        "debug=smoke",
        "model=resnet18",
        "finetune=full",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks=default",
    ]
    results = train(make_cfg(overrides, tmp_path))
    report = tmp_path / "report.html"
    html = report.read_text()
    page = parse(html)
    rows = {row["Split"]: row for row in table(page, "results-table")}
    for split, name in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        assert rows[name]["Accuracy"] == _pct(results["metrics"][f"{split}/acc"])
        assert rows[name]["Macro Accuracy"] == _pct(results["metrics"][f"{split}/acc_macro"])
        assert rows[name]["Loss"] == f"{results['metrics'][f'{split}/loss']:.4f}"
        assert rows[name]["Images"] == f"{results['data']['sizes'][split]:,}"
    test = results["metrics"]["test/acc"]
    low, high = (float(v) / 100 for v in rows["Test"]["95% Wilson interval"].rstrip("%").split("–"))
    assert low < test < high
    gap = 100 * (results["metrics"]["train/acc"] - results["metrics"]["val/acc"])
    assert f"Train − validation accuracy gap: {gap:+.2f} points" in html
    commit = results["provenance"]["commit"]
    assert "<title>train: resnet18 on synthetic, finetune=full</title>" in html and commit[:10] in html
    assert "resnet18 (32×32 px, from scratch, imagenet stem)" in html
    assert "artifacts/learning_curves.png" in page.links and len(page.images) == 1  # the only figure it exported
    assert all(_resolves(report, href) for href in page.links)
    assert write_run_report(tmp_path) == report  # rewritable from the folder alone


@pytest.mark.slow  # ~2 min: drawing 10 classes' attention grids for 16 jobs
@pytest.mark.parametrize(("jobs", "limit_mb"), [(4, 1.5), (12, 3.0)])
def test_report_size_stays_within_target(tmp_path: Path, jobs: int, limit_mb: float):
    realistic_sweep(tmp_path, ZOO[:jobs])
    write_summary(tmp_path)
    size = (tmp_path / "report.html").stat().st_size
    assert size <= limit_mb * 2**20, f"{size / 2**20:.2f} MB"
    page = parse((tmp_path / "report.html").read_text())
    written = {p.name for p in tmp_path.glob("*.png")}
    assert written <= set(page.links)  # nothing lost: every figure of the folder is linked at full resolution
