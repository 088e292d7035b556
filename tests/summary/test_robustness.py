"""The "Does it hold up?" section against hand computations: mCE is 100 for its baseline and follows the errors per
corruption, effective robustness is the residual of a line in logit space, every number shown is the job's
robustness.json's, and there is no trace of the section in a sweep that did not evaluate under shift."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from gnr650.robustness.shifts import CORRUPTIONS
from gnr650.summary import collect_jobs, robustness, write_summary
from gnr650.summary.collect import COMPLETED, Job
from gnr650.summary.figures import job_style
from tests.summary.html_report import parse, table
from tests.summary.jobs import SHIFTS, add_robustness, make_job, robustness_report, shift_error

# (finetune, clean accuracy, error scale: its shift errors as a multiple of the baseline's, skipped shifts, WiSE curve)
SWEEP = [
    ("last", 0.90, 1.0, (), True),
    ("full", 0.95, 0.5, (), True),
    ("lora", 0.92, 0.8, ("glass_blur",), True),
    ("frozen", 0.85, 1.2, (), False),
]
FIGURES = {"robustness_accuracy.png", "robustness_shifts.png", "robustness_wise.png"}


def _sweep(root: Path, sweep=SWEEP, baseline: str = "finetune=last") -> Path:
    for num, (finetune, clean, scale, skipped, wise) in enumerate(sweep):
        job = make_job(root, num, ["model=vit_ti16", f"finetune={finetune}"], acc=(0.99, clean, clean))
        add_robustness(job, robustness_report(clean, scale, baseline=baseline, skipped=skipped, wise=wise))
    return root


def _on_points(root: Path, points) -> robustness.Robustness:
    """Jobs finetune=s0, s1, ... whose every shift row is at the given shifted accuracy."""
    for num, (clean, shifted) in enumerate(points):
        job = make_job(root, num, [f"finetune=s{num}"], acc=(0.99, clean, clean))
        add_robustness(job, robustness_report(float(clean), shifted=float(shifted)))
    return robustness.analyse(collect_jobs(root))


def _measure(held: robustness.Robustness, key: str) -> dict[str, float | None]:
    return {job.label: held.measures[i][key] for i, job, _ in held.found}


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def test_mce_is_100_for_the_baseline_and_scales_with_the_errors(tmp_path: Path):
    held = robustness.analyse(collect_jobs(_sweep(tmp_path)))
    mce = _measure(held, "mce")
    assert mce["finetune=last"] == 100.0  # exactly: the baseline's errors over themselves
    assert mce["finetune=full"] == pytest.approx(50)  # half the baseline's error at every corruption and severity
    assert mce["finetune=lora"] == pytest.approx(80) and mce["finetune=frozen"] == pytest.approx(120)
    # lora could not take glass_blur: every job's mCE averages the other 14 corruptions, and a note says so
    assert held.corruptions == [c for c in CORRUPTIONS if c != "glass_blur"]
    assert "mCE leaves out glass_blur: not evaluated by every job." in held.notes


def _job(tmp: Path, name: str, finetune: str) -> Job:
    return Job(dir=tmp / name, num=None, overrides=[f"+finetune={finetune}"], status=COMPLETED, label=name)


def _errors(baseline: str, **errors: tuple[float, float]) -> dict:
    """A robustness.json with corruption rows only: {corruption: (error at severity 1, at severity 2)}."""
    rows = [
        {"shift": name, "group": "corruption", "level": level, "acc": 1 - error}
        for name, pair in errors.items()
        for level, error in enumerate(pair, start=1)
    ]
    return {"baseline": baseline, "shifts": rows}


def test_mce_normalises_each_corruption_by_the_mean_of_the_baseline_seeds(tmp_path: Path):
    """Two baseline seeds whose summed errors average 0.2 (a) and 0.4 (b); last_grid is no baseline job."""
    reports = {
        "seed0": ("last", _errors("finetune=last", a=(0.1, 0.1), b=(0.3, 0.2))),
        "seed1": ("last", _errors("finetune=last", a=(0.15, 0.05), b=(0.2, 0.1))),
        "other": ("full", _errors("finetune=last", a=(0.05, 0.05), b=(0.3, 0.3))),
        "grid": ("last_grid", _errors("finetune=last", a=(0.2, 0.2), b=(0.4, 0.4))),
    }
    found = [
        (i, _job(tmp_path, name, finetune), report) for i, (name, (finetune, report)) in enumerate(reports.items())
    ]
    notes: list[str] = []
    baseline, jobs, corruptions, mce = robustness.mce(found, notes)
    assert baseline == "finetune=last" and [j.label for j in jobs] == ["seed0", "seed1"] and not notes
    assert corruptions == ["a", "b"]
    # per corruption, summed error / the baseline's: seed0 (0.2/0.2, 0.5/0.4), seed1 (0.2/0.2, 0.3/0.4),
    # other (0.1/0.2, 0.6/0.4): 100 x their means; the pooled ratio 0.7/0.6 would give other 116.7, not 100
    assert list(mce.values()) == pytest.approx([112.5, 87.5, 100.0, 200.0])


def test_mce_is_left_out_with_a_note_when_no_job_runs_the_baseline(tmp_path: Path):
    sweep = [("last_grid", 0.9, 1.0, (), True), ("full", 0.95, 0.5, (), True), ("lora", 0.92, 0.8, (), True)]
    write_summary(_sweep(tmp_path, sweep, baseline="finetune=last"))
    note = (
        "mCE left out: no job of this sweep with corruption results ran with finetune=last (robustness.baseline); set "
        "robustness.baseline to the override that selects the baseline job(s), quoted for Hydra, e.g. "
        "'robustness.baseline=\"finetune=last\"'."
    )
    assert note in (tmp_path / "summary.md").read_text()
    rows = table(parse((tmp_path / "report.html").read_text()), "robustness-table")
    assert [row["mCE (baseline 100)"] for row in rows] == ["—"] * 3
    assert [job["robustness/mce"] for job in json.loads((tmp_path / "summary.json").read_text())["jobs"]] == [None] * 3


def test_effective_robustness_is_the_residual_of_a_hand_fitted_logit_line(tmp_path: Path):
    # clean logits -1, 0, 1 and shifted logits -1, 0.5, 1: by hand, least squares gives slope 1 and intercept 1/6
    x, y = np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 0.5, 1.0])
    held = _on_points(tmp_path, zip(_sigmoid(x), _sigmoid(y)))
    assert held.fit == pytest.approx((1.0, 1 / 6))
    effective = list(_measure(held, "effective_robustness").values())
    assert effective == pytest.approx(_sigmoid(y) - _sigmoid(x + 1 / 6), abs=1e-9)


def test_jobs_on_one_logit_line_have_no_effective_robustness(tmp_path: Path):
    clean = np.array([0.6, 0.75, 0.85, 0.95])
    shifted = _sigmoid(0.8 * np.log(clean / (1 - clean)) - 0.5)
    held = _on_points(tmp_path, zip(clean, shifted))
    assert held.fit == pytest.approx((0.8, -0.5))
    assert list(_measure(held, "effective_robustness").values()) == pytest.approx([0.0] * 4, abs=1e-9)


def test_effective_robustness_needs_three_distinct_clean_accuracies(tmp_path: Path):
    held = _on_points(tmp_path, [(0.8, 0.6), (0.8, 0.7), (0.9, 0.75)])
    assert held.fit is None and set(_measure(held, "effective_robustness").values()) == {None}
    assert any(n.startswith("Effective robustness left out") and n.endswith("this sweep has 2.") for n in held.notes)


def test_every_number_of_the_section_is_the_jobs_robustness_json(tmp_path: Path):
    summary = write_summary(_sweep(tmp_path))
    reports = [json.loads((tmp_path / str(n) / "artifacts" / "robustness" / "eval.json").read_text()) for n in range(4)]
    html = (tmp_path / "report.html").read_text()
    page = parse(html)
    assert '<li><a href="#does-it-hold-up">Does it hold up?</a></li>' in html and "does-it-hold-up" in page.ids
    accuracy, calibration = table(page, "robustness-table"), table(page, "calibration-table")
    assert [row["Job"] for row in accuracy] == [f"finetune={s[0]}" for s in SWEEP]
    for row, cal, report in zip(accuracy, calibration, reports):
        assert row["Clean Accuracy"] == f"{100 * report['clean']['acc']:.2f}%"
        assert row["Mean Corruption Accuracy"] == f"{100 * report['mean_corruption_acc']:.2f}%"
        assert row["Relative Robustness"] == f"{report['relative_robustness']:.3f}"
        assert row["Shifted Accuracy"] == f"{100 * report['shifted_acc']:.2f}%"
        assert (cal["ECE Clean"], cal["ECE Clean, Temperature-Scaled"], cal["ECE Shifted"]) == tuple(
            f"{v:.3f}" for v in (report["clean"]["ece"], report["clean_scaled"]["ece"], report["shifted"]["ece"])
        )
        assert (cal["NLL Clean"], cal["NLL Shifted"], cal["Brier Clean"], cal["Brier Shifted"]) == tuple(
            f"{report[part][key]:.3f}" for key in ("nll", "brier") for part in ("clean", "shifted")
        )
    # summary.json and summary.csv: the same numbers per job, mCE and effective robustness as the table shows them
    records = json.loads((tmp_path / "summary.json").read_text())["jobs"]
    with (tmp_path / "summary.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    for record, csv_row, row, report in zip(records, csv_rows, accuracy, reports):
        assert record["robustness/shifted_acc"] == report["shifted_acc"]
        assert record["robustness/ece_clean_scaled"] == report["clean_scaled"]["ece"]
        assert float(csv_row["robustness/mce"]) == pytest.approx(record["robustness/mce"])
        assert row["mCE (baseline 100)"] == f"{record['robustness/mce']:.1f}"
        assert row["Effective Robustness (points)"] == f"{100 * record['robustness/effective_robustness']:+.2f}"
    # the shift lora could not take, with its reason; its figures embedded and linked; each reliability diagram linked
    skipped = "finetune=lora: glass_blur (glass_blur needs images of at least 128 px)"
    assert skipped in html and skipped in (tmp_path / "summary.md").read_text()
    assert FIGURES.issubset(p.name for p in summary.files) and FIGURES.issubset(page.links)
    assert {name.replace(".", "-").replace("_", "-") for name in FIGURES} <= page.ids
    diagrams = [f"{n}/artifacts/robustness/reliability.png" for n in range(4)]
    assert set(diagrams) <= set(page.links) and all((tmp_path / d).is_file() for d in diagrams)
    assert "The most accurate job on clean data, finetune=full (95.00%), is also the most accurate under shift." in html


def test_jobs_whose_images_took_no_shift_still_show_their_clean_numbers(tmp_path: Path):
    """Images too small for any shift (as the tests' synthetic data): clean numbers, every shift listed as skipped,
    notes on why mCE and effective robustness are left out."""
    every = tuple(name for _, name, _ in SHIFTS)
    write_summary(_sweep(tmp_path, [("last", 0.9, 1.0, every, True), ("full", 0.95, 0.5, every, True)]))
    md = (tmp_path / "summary.md").read_text()
    assert "## Does it hold up?" in md and "mCE left out: no job evaluated the corruptions" in md
    assert "Effective robustness left out" in md and "this sweep has 0." in md
    assert f"finetune=full: {every[0]} ({every[0]} needs images of at least 128 px); {every[1]}" in md
    rows = table(parse((tmp_path / "report.html").read_text()), "robustness-table")
    assert [(row["Clean Accuracy"], row["Shifted Accuracy"]) for row in rows] == [("90.00%", "—"), ("95.00%", "—")]


def test_a_sweep_without_robustness_json_has_no_trace_of_the_section(two_by_two: Path):
    summary = write_summary(two_by_two)
    for name in ("summary.md", "report.html"):
        assert "Does it hold up" not in (two_by_two / name).read_text()
    data = json.loads((two_by_two / "summary.json").read_text())
    assert "robustness" not in data and not [k for job in data["jobs"] for k in job if k.startswith("robustness/")]
    assert "robustness/" not in (two_by_two / "summary.csv").read_text()
    assert not FIGURES & {p.name for p in summary.files}


def test_seed_table_pools_each_setting_over_its_seeds(tmp_path: Path):
    scales = {("last", 0): 0.9, ("last", 1): 1.1, ("full", 0): 0.5, ("full", 1): 0.7}
    for num, ((finetune, seed), scale) in enumerate(scales.items()):
        job = make_job(tmp_path, num, [f"finetune={finetune}", f"seed={seed}"])
        add_robustness(job, robustness_report(0.9 - num / 100, scale))
    write_summary(tmp_path)
    page = parse((tmp_path / "report.html").read_text())
    [pooled] = [
        t for t in page.tables if t["rows"][0][:2] == ["Setting (seeds pooled)", "Seeds"] and len(t["rows"][0]) > 6
    ]
    rows = {cells[0]: dict(zip(pooled["rows"][0], cells)) for cells in pooled["rows"][1:]}
    # the baseline's error is the mean of its seeds' (scale 1.0), so mCE is 100 x the scale: 90, 110 and 50, 70
    for finetune, mces in (("last", [90, 110]), ("full", [50, 70])):
        assert rows[f"finetune={finetune}"]["mCE (baseline 100)"] == f"{np.mean(mces):.1f} ± {np.std(mces, ddof=1):.1f}"
    reports = [json.loads((tmp_path / str(n) / "artifacts" / "robustness" / "eval.json").read_text()) for n in range(4)]
    shifted = [r["shifted_acc"] for r in reports[2:]]
    expected = f"{100 * np.mean(shifted):.2f} ± {100 * np.std(shifted, ddof=1):.2f}%"
    assert rows["finetune=full"]["Shifted Accuracy"] == expected and rows["finetune=full"]["Seeds"] == "2"


@pytest.mark.parametrize(
    ("points", "verdict"),
    [
        (
            [(0.9, 0.6), (0.8, 0.7), (0.7, 0.5)],
            "finetune=s0 (90.00%), is not the most accurate under shift: 60.00% against finetune=s1's 70.00%.",
        ),
        ([(0.9, 0.8), (0.8, 0.7), (0.7, 0.5)], "finetune=s0 (90.00%), is also the most accurate under shift."),
    ],
)
def test_observations_say_whether_the_best_on_clean_data_holds_up(tmp_path: Path, points, verdict):
    first, second = _on_points(tmp_path, points).observations
    best = max(range(3), key=lambda i: points[i][1])
    assert first.startswith(f"Highest shifted accuracy: finetune=s{best} at {100 * points[best][1]:.2f}%")
    assert second == f"The most accurate job on clean data, {verdict}"


def test_shift_heatmap_cells_are_each_shifts_mean_over_its_levels(tmp_path: Path):
    fig = robustness.shift_figure(robustness.analyse(collect_jobs(_sweep(tmp_path))))
    ax = fig.axes[0]
    (image,) = ax.images
    cells = image.get_array()
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["clean (no shift)", *(name for _, name, _ in SHIFTS)]  # grouped in the suite's order
    notes = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    for column, (_, clean, scale, skipped, _) in enumerate(SWEEP):
        assert cells[0, column] == pytest.approx(100 * clean)
        for row, (k, (_, name, levels)) in enumerate(enumerate(SHIFTS), start=1):
            if name in skipped:
                assert cells.mask[row, column] and notes[column, row] == "skipped"
            else:
                mean = np.mean([1 - scale * shift_error(k, level) for level in range(1, levels + 1)])
                assert cells[row, column] == pytest.approx(100 * mean)
                assert notes[column, row] == f"{100 * mean:.1f}"


def test_accuracy_scatter_draws_each_job_and_the_trend_with_labels_apart(tmp_path: Path):
    """Six jobs within a few points of each other, as strategies on one data set are."""
    clean = np.array([0.90, 0.905, 0.91, 0.915, 0.92, 0.96])
    held = _on_points(tmp_path, zip(clean, clean - np.array([0.1, 0.11, 0.1, 0.12, 0.1, 0.05])))
    fig = robustness.accuracy_figure(held)
    fig.savefig(io.BytesIO(), format="png", dpi=100)  # as the summary writes it
    ax = fig.axes[0]
    points = [line for line in ax.lines if line.get_linestyle() == "None"]
    for i, line in enumerate(points):
        m = held.measures[i]
        assert (line.get_xdata()[0], line.get_ydata()[0]) == (m["clean_acc"], m["shifted_acc"])
        assert (line.get_color(), line.get_marker()) == (job_style(i).color, job_style(i).marker)
    [trend] = [line for line in ax.lines if line.get_label().startswith("trend")]
    slope, intercept = held.fit
    x = np.asarray(trend.get_xdata())
    assert np.allclose(trend.get_ydata(), _sigmoid(slope * np.log(x / (1 - x)) + intercept))
    boxes = [text.get_window_extent(fig.canvas.get_renderer()) for text in ax.texts]
    assert len(boxes) == 6 and not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_wise_figure_draws_the_jobs_with_a_curve_only(tmp_path: Path):
    held = robustness.analyse(collect_jobs(_sweep(tmp_path)))
    fig = robustness.wise_figure(held)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [
        "finetune=last",
        "finetune=full",
        "finetune=lora",
        "clean test data",
        "shifted: each shift at its middle level",
    ]  # frozen evaluated no WiSE curve
    ax = fig.axes[0]
    for i, _, report in held.found[:3]:
        clean, shifted = [line for line in ax.lines if line.get_color() == job_style(i).color]
        assert (clean.get_linestyle(), shifted.get_linestyle()) == ("-", "--")
        assert list(clean.get_xdata()) == [p["alpha"] for p in report["wise"]]
        assert list(shifted.get_ydata()) == pytest.approx([100 * p["shifted_acc"] for p in report["wise"]])


def test_wise_figure_draws_the_mean_over_seeds_per_setting(tmp_path: Path):
    scales = {("last", 0): 0.9, ("full", 0): 0.5, ("last", 1): 1.1, ("full", 1): 0.7}
    for num, ((finetune, seed), scale) in enumerate(scales.items()):
        add_robustness(make_job(tmp_path, num, [f"finetune={finetune}", f"seed={seed}"]), robustness_report(0.8, scale))
    held = robustness.analyse(collect_jobs(tmp_path))
    fig = robustness.wise_figure(held)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["finetune=last (mean of 2 seeds)", "finetune=full (mean of 2 seeds)"]
    reports = {job.label: report for _, job, report in held.found}
    ax = fig.axes[0]
    for first, finetune in ((0, "last"), (1, "full")):  # the style of the setting's first job
        clean, shifted = [line for line in ax.lines if line.get_color() == job_style(first).color]
        seeds = [reports[f"finetune={finetune}, seed={seed}"]["wise"] for seed in (0, 1)]
        want = [100 * np.mean([w[k]["shifted_acc"] for w in seeds]) for k in range(len(seeds[0]))]
        assert list(shifted.get_ydata()) == pytest.approx(want)
        assert list(clean.get_xdata()) == [p["alpha"] for p in seeds[0]]
