"""The comparison tables' cells against hand-formatted numbers and independent statistics (numpy, scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gnr650.summary import tables
from gnr650.summary.collect import COMPLETED, FAILED, Job


def _job(tmp: Path, name: str, swept: dict, status: str = COMPLETED, **results) -> Job:
    return Job(
        dir=tmp / name,
        num=None,
        overrides=[],
        status=status,
        error=None if status == COMPLETED else "boom",
        results=results,
        label=", ".join(f"{k}={v}" for k, v in swept.items()),
        swept=swept,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, tables.MISSING),
        (0.04, "0.0 s"),
        (59.94, "59.9 s"),
        (60, "1m 00s"),  # a minute is no longer shown in seconds
        (125.4, "2m 05s"),
        (3599.4, "59m 59s"),
        (3600, "1h 00m"),
        (3725, "1h 02m"),
        (25 * 3600 + 61, "25h 01m"),
    ],
)
def test_duration_cells(seconds, text):
    assert tables.duration(seconds) == text


def test_percent_interval_and_parameter_cells():
    assert tables.percent(None) == tables.MISSING
    assert tables.percent(0.5) == "50.00%"
    assert tables.percent(0.98765, 0.0123) == "98.77 ± 1.23%"
    assert tables.percent(1.0, 0.0) == "100.00 ± 0.00%"
    assert tables.interval(0.1, 0.25) == "10.00–25.00%"
    assert tables.params(None, 10) == tables.MISSING
    assert tables.params(1_234_567, 2 * 1_234_567) == "1,234,567 (50.00%)"
    assert tables.params(3, 400) == "3 (0.75%)"
    assert tables.params(0, 10) == "0 (0.00%)"
    assert tables.params(5, None) == "5" and tables.params(5, 0) == "5"  # no share without a total


def test_markdown_escapes_pipes_and_has_one_separator_per_column():
    table = tables.Table(["a", "b|c"], [["1", "x|y"], ["2", ""]], [False, False])
    assert tables.markdown(table).splitlines() == [
        "| a | b\\|c |",
        "| --- | --- |",
        "| 1 | x\\|y |",
        "| 2 |  |",
    ]


def test_csv_columns_are_the_union_of_keys_in_first_seen_order():
    text = tables.to_csv([{"a": 1, "b": 2}, {"c": 3, "a": 4}, {"b": None}])
    assert text == "a,b,c\n1,2,\n4,,3\n,,\n"


def test_pairwise_cells_come_from_each_row():
    pairs = [
        {"a": "x", "b": "y", "only_a": 7, "only_b": 2, "p": 0.17968750, "p_holm": 0.359375, "significant": False},
        {"a": "x", "b": "z", "only_a": 10, "only_b": 0, "p": 2 / 1024, "p_holm": 6 / 1024, "significant": True},
    ]
    table = tables.pairwise_table(pairs)
    assert [dict(zip(table.headers, row, strict=True)) for row in table.rows] == [
        {
            "Pair (A vs B)": "x vs y",
            "Only A right": "7",
            "Only B right": "2",
            "Exact McNemar p": "0.18",
            "Holm p": "0.359",
            "Significant at 5% (Holm)": "no",
        },
        {
            "Pair (A vs B)": "x vs z",
            "Only A right": "10",
            "Only B right": "0",
            "Exact McNemar p": "0.00195",
            "Holm p": "0.00586",
            "Significant at 5% (Holm)": "yes",
        },
    ]
    assert table.failed == [False, False]


def test_seed_groups_pool_completed_seeds_with_the_sample_std(tmp_path):
    """Two settings x three seeds; one seed of `b` failed: it counts as a job, not in the mean/std."""
    accs = {("a", "0"): 0.70, ("a", "1"): 0.75, ("a", "2"): 0.90, ("b", "0"): 0.40, ("b", "1"): 0.55}
    fits = {("a", "0"): 30.0, ("a", "1"): 50.0, ("a", "2"): 100.0, ("b", "0"): 10.0, ("b", "1"): 20.0}
    jobs = []
    for setting in ("a", "b"):
        for seed in ("0", "1", "2"):
            key = (setting, seed)
            swept = {"model": setting, "seed": seed}
            if key in accs:
                metrics = {"test/acc": accs[key], "train/acc": 1.0, "val/acc": accs[key] - 0.1}
                jobs.append(_job(tmp_path, f"{setting}{seed}", swept, metrics=metrics, timing={"fit_s": fits[key]}))
            else:
                jobs.append(_job(tmp_path, f"{setting}{seed}", swept, status=FAILED))
    records = {r["label"]: r for r in tables.seed_records(jobs)}
    assert list(records) == ["model=a", "model=b"]
    for setting in ("a", "b"):
        rec, done = records[f"model={setting}"], [k for k in accs if k[0] == setting]
        values = np.array([accs[k] for k in done])
        assert rec["seeds"] == ["0", "1", "2"] and rec["jobs"] == 3 and rec["completed"] == len(done)
        assert rec["test/acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert rec["test/acc_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert rec["val/acc_mean"] == pytest.approx(values.mean() - 0.1, abs=1e-12)
        assert rec["train/acc_mean"] == 1.0 and rec["train/acc_std"] == 0.0
        fit = np.array([fits[k] for k in done])
        assert rec["fit_s_mean"] == pytest.approx(fit.mean()) and rec["fit_s_std"] == pytest.approx(fit.std(ddof=1))

    table = tables.seed_table(jobs)
    rows = [dict(zip(table.headers, row, strict=True)) for row in table.rows]
    a, b = np.array([0.70, 0.75, 0.90]), np.array([0.40, 0.55])
    settings = [(r["Setting (seeds pooled)"], r["Seeds completed"]) for r in rows]
    assert settings == [("model=a", "3/3"), ("model=b", "2/3")]
    assert table.failed == [False, True]  # a setting with a seed missing is highlighted
    assert rows[0]["Test Accuracy"] == f"{100 * a.mean():.2f} ± {100 * a.std(ddof=1):.2f}%"
    assert rows[1]["Validation Accuracy"] == f"{100 * (b.mean() - 0.1):.2f} ± {100 * b.std(ddof=1):.2f}%"
    assert rows[0]["Train Accuracy"] == "100.00 ± 0.00%"
    assert (rows[0]["Fit Time"], rows[1]["Fit Time"]) == ("1m 00s", "15.0 s")  # mean fit 60 s, 15 s

    intervals = tables.seed_interval_table(jobs)
    assert intervals.failed == [False, False]
    for row, values, setting in zip(intervals.rows, (a, b), ("model=a", "model=b"), strict=True):
        cells = dict(zip(intervals.headers, row, strict=True))
        assert cells["Setting (seeds pooled)"] == setting
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert cells["Seeds"] == str(len(values))
        assert cells["Test Accuracy (mean ± std)"] == f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}%"
        assert cells["95% Interval (t)"] == f"{100 * low:.2f}–{100 * high:.2f}%"


def test_one_seed_has_std_zero_and_no_interval_and_no_seed_sweep_no_tables(tmp_path):
    one = [_job(tmp_path, "a", {"seed": "0"}, metrics={"test/acc": 0.8})]
    [rec] = tables.seed_records(one)
    assert rec["label"] == "all" and rec["test/acc_mean"] == 0.8 and rec["test/acc_std"] == 0.0
    assert rec["val/acc_mean"] is None and rec["val/acc_std"] is None and rec["fit_s_mean"] is None
    assert tables.seed_interval_table(one).rows == [["all", "1", "80.00 ± 0.00%", tables.MISSING]]
    unseeded = [_job(tmp_path, "a", {"lr": "0.1"}, metrics={"test/acc": 0.8})]
    assert tables.seed_records(unseeded) == [] and tables.seed_table(unseeded) is None
    assert tables.seed_interval_table(unseeded) is None
    no_test = [_job(tmp_path, "a", {"seed": "0"}, metrics={"val/acc": 0.8})]
    assert tables.seed_interval_table(no_test) is None


def test_job_table_cells_flags_and_links(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "report.html").write_text("")
    ok = _job(
        tmp_path,
        "ok",
        {"lr": "0.1"},
        metrics={"train/acc": 0.9, "val/acc": 0.8, "test/acc": 0.75},
        params={"trainable": 1000, "total": 4000},
        timing={"fit_s": 90.0, "total_s": 95.5},
        throughput=1234.5,
        peak_memory=2048.4,
    )
    warned = _job(tmp_path, "warned", {"lr": "9"}, metrics={"test/acc": 0.1}, warnings=["did not learn", "slow"])
    warned.results["config"] = {"finetune": {"knn": {"k": 5}}}
    failed = _job(tmp_path, "failed", {"lr": "1"}, status=FAILED)
    ok.num = 7
    jobs = [ok, warned, failed]
    table = tables.job_table(jobs, tmp_path, {ok.dir: (0.7, 0.8)})
    rows = [dict(zip(table.headers, row, strict=True)) for row in table.rows]  # read by column, as a reader does
    assert rows[0] == {
        "Job": "lr=0.1",
        "Train Accuracy": "90.00%",
        "Validation Accuracy": "80.00%",
        "Test Accuracy": "75.00%",
        "Test 95% Wilson interval": "70.00–80.00%",
        "Trainable Params": "1,000 (25.00%)",
        "Fit Time": "1m 30s",
        "Images/s": "1,234",
        "Peak Memory": "2,048 MB",
        "Status": "completed",
        "Folder": "ok/report.html",
    }
    missing = ("Test 95% Wilson interval", "Trainable Params", "Fit Time", "Images/s", "Peak Memory")
    assert [rows[1][column] for column in missing] == [tables.MISSING] * 5
    assert rows[1]["Status"] == f"completed, warning: did not learn, warning: slow, note: {tables.LOOKUP_NOTE}"
    assert (rows[2]["Status"], rows[2]["Folder"]) == ("failed: boom", "failed/")
    assert table.failed == [False, False, True] and table.warned == [False, True, False]
    assert table.links == {table.headers.index("Folder"): ["ok/report.html", "warned/", "failed/"]}
    root_job = _job(tmp_path, "", {}, metrics={})
    root_job.dir = tmp_path
    assert tables.job_table([root_job], tmp_path, {}).rows[0][-1] == "./"

    records = tables.job_records(jobs)  # the columns of summary.csv / summary.json, by name
    assert records[0] == {
        "job": 7,
        "label": "lr=0.1",
        "lr": "0.1",
        "status": COMPLETED,
        "error": None,
        "warnings": None,
        "train/acc": 0.9,
        "val/acc": 0.8,
        "test/acc": 0.75,
        "trainable_params": 1000,
        "total_params": 4000,
        "fit_s": 90.0,
        "total_s": 95.5,
        "images_per_s": 1234.5,
        "peak_memory_mb": 2048.4,
        "run_dir": str(ok.dir),
    }
    assert records[1]["warnings"] == "did not learn; slow" and records[1]["train/acc"] is None
    assert records[2]["error"] == "boom" and records[2]["status"] == FAILED
