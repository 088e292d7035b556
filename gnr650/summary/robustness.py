"""The summary's "Does it hold up?" section: how each job's best weights fare on the test split under distribution
shifts, and how well calibrated they are, from each job's ``robustness.json`` (gnr650/robustness), compared across
the sweep: the measures per job (and over seeds), mCE against the sweep's baseline job(s), effective robustness
against the sweep's own trend, and the figures.

Artefacts are found through each job's ``artifacts/index.json`` by kind, as the other sections find theirs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from gnr650.interpret.index import ArtifactKind
from gnr650.robustness.shifts import CORRUPTION, GROUPS

from .changes import artefact, load_json_artefacts
from .collect import Job, parse_override
from .figures import job_legend, job_style, place_labels, tick_label, titled
from .report import FigureEntry, Links, Paragraphs, Section, TableBlock
from .tables import MISSING, Table, duration, mean_std, percent, seed_groups

HEADING = "Does it hold up?"
LOGIT_CLIP = 1e-4  # an accuracy of exactly 0 or 1 has no logit: it is fitted and drawn this far inside (0, 1)
SET_BASELINE = (
    "set robustness.baseline to the override that selects the baseline job(s), quoted for Hydra, e.g. "
    "'robustness.baseline=\"finetune=last\"'"
)


@dataclass
class Robustness:
    """The jobs with a robustness.json and what the section derives from them."""

    found: list[tuple[int, Job, dict]]  # (position in the sweep, job, its robustness.json)
    measures: dict[int, dict]  # by position: ``measures``' numbers
    baseline: str | None  # robustness.baseline, as the jobs recorded it
    baseline_jobs: list[Job]  # the jobs mCE is relative to
    corruptions: list[str]  # those mCE averages over
    fit: tuple[float, float] | None  # slope, intercept of logit(shifted accuracy) on logit(clean accuracy)
    notes: list[str]  # why a measure is left out or partial
    observations: list[str] = field(default_factory=list)  # ``observations``' statements


def measures(report: dict, mce: float | None = None, effective: float | None = None) -> dict:
    """One job's numbers as the table, summary.csv and summary.json show them (accuracies and effective robustness
    as fractions, mCE with the baseline at 100, ECE/NLL/Brier as computed); None where the job has none."""
    clean, scaled = report.get("clean") or {}, report.get("clean_scaled") or {}
    shifted, shifted_scaled = report.get("shifted") or {}, report.get("shifted_scaled") or {}
    return {
        "clean_acc": clean.get("acc"),
        "mean_corruption_acc": report.get("mean_corruption_acc"),
        "relative_robustness": report.get("relative_robustness"),
        "shifted_acc": report.get("shifted_acc"),
        "mce": mce,
        "effective_robustness": effective,
        "ece_clean": clean.get("ece"),
        "ece_clean_scaled": scaled.get("ece"),
        "ece_shifted": shifted.get("ece"),
        "ece_shifted_scaled": shifted_scaled.get("ece"),
        "nll_clean": clean.get("nll"),
        "nll_shifted": shifted.get("nll"),
        "brier_clean": clean.get("brier"),
        "brier_shifted": shifted.get("brier"),
        "temperature": report.get("temperature"),
    }


MEASURES = tuple(measures({}))


def analyse(jobs: list[Job]) -> Robustness | None:
    """Every completed job's robustness.json with its mCE and effective robustness; None when no job has one."""
    found = load_json_artefacts(jobs, ArtifactKind.ROBUSTNESS_JSON)
    if not found:
        return None
    notes: list[str] = []
    baseline, baseline_jobs, corruptions, mces = mce(found, notes)
    effective, fit = effective_robustness(found, notes)
    held = Robustness(
        found,
        {i: measures(report, mces.get(i), effective.get(i)) for i, _, report in found},
        baseline,
        baseline_jobs,
        corruptions,
        fit,
        notes,
    )
    held.observations = observations(held)
    return held


def corruption_errors(report: dict) -> dict[str, dict[int, float]]:
    """{corruption: {severity: error (1 - accuracy)}} of a robustness.json's corruption rows."""
    errors: dict[str, dict[int, float]] = {}
    for row in report.get("shifts") or []:
        if row.get("group") == CORRUPTION:
            errors.setdefault(row["shift"], {})[int(row["level"])] = 1 - row["acc"]
    return errors


def selects(job: Job, baseline: str) -> bool:
    """Whether the job ran with the override ``baseline`` (``finetune=last`` also matches ``+finetune=last``, not
    ``finetune=last_grid``)."""
    return parse_override(baseline) in {parse_override(o) for o in job.overrides}


def mce(found: list[tuple[int, Job, dict]], notes: list[str]) -> tuple[str | None, list[Job], list[str], dict]:
    """Hendrycks & Dietterich's (2019) mean corruption error, ImageNet-C's normalisation with the sweep's baseline
    job(s) in AlexNet's place: per corruption, the job's error summed over severities over the baseline's (the mean
    over the jobs ``robustness.baseline`` selects), averaged over the corruptions, x 100. Over the (corruption,
    severity) pairs every job evaluated, so that all mCEs average the same errors. Returns the baseline, its jobs, the
    corruptions used and {position: mCE}; when it cannot be computed, ``notes`` says why."""
    errors = {i: e for i, _, report in found if (e := corruption_errors(report))}
    if not errors:
        notes.append("mCE left out: no job evaluated the corruptions (see the skipped shifts).")
        return None, [], [], {}
    names = list(dict.fromkeys(report.get("baseline") for i, _, report in found if i in errors))
    if len(names) > 1:
        notes.append(f"mCE left out: the jobs name different baselines ({', '.join(map(str, names))}); {SET_BASELINE}.")
        return None, [], [], {}
    (baseline,) = names
    if not baseline:
        notes.append(f"mCE left out: robustness.baseline is not set; {SET_BASELINE}.")
        return None, [], [], {}
    reference = [(i, job) for i, job, _ in found if i in errors and selects(job, baseline)]
    if not reference:
        notes.append(
            f"mCE left out: no job of this sweep with corruption results ran with {baseline} (robustness.baseline); "
            f"{SET_BASELINE}."
        )
        return baseline, [], [], {}
    common = set.intersection(*({(c, s) for c, levels in e.items() for s in levels} for e in errors.values()))
    order = list(dict.fromkeys(c for e in errors.values() for c in e))
    severities = {c: sorted(s for name, s in common if name == c) for c in order}
    summed = {i: {c: sum(e[c][s] for s in severities[c]) for c in order if severities[c]} for i, e in errors.items()}
    base = {c: statistics.fmean(summed[i][c] for i, _ in reference) for c in summed[reference[0][0]]}
    used = [c for c, error in base.items() if error > 0]
    if unshared := [c for c in order if not severities[c]]:
        notes.append(f"mCE leaves out {', '.join(unshared)}: not evaluated by every job.")
    if perfect := [c for c, error in base.items() if error == 0]:
        notes.append(f"mCE leaves out {', '.join(perfect)}: the baseline made no error there to normalise by.")
    if not used:
        return baseline, [job for _, job in reference], [], {}
    values = {i: 100 * statistics.fmean(s[c] / base[c] for c in used) for i, s in summed.items()}
    return baseline, [job for _, job in reference], used, values


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def expit(x) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def effective_robustness(
    found: list[tuple[int, Job, dict]], notes: list[str]
) -> tuple[dict[int, float], tuple[float, float] | None]:
    """Taori et al.'s (2020) effective robustness: a job's shifted accuracy minus what a line fitted by least squares
    to all jobs' (clean, shifted) accuracies in logit space predicts at its clean accuracy (a fraction). The trend is
    the sweep's own, so it needs at least 3 distinct clean accuracies; else ``notes`` says so."""
    points = {
        i: (m["clean_acc"], m["shifted_acc"])
        for i, _, report in found
        if (m := measures(report))["clean_acc"] is not None and m["shifted_acc"] is not None
    }
    distinct = len({clean for clean, _ in points.values()})
    if distinct < 3:
        notes.append(
            "Effective robustness left out: it is measured against a trend fitted over at least 3 jobs with distinct "
            f"clean accuracies; this sweep has {distinct}."
        )
        return {}, None
    clean, shifted = (np.array(v) for v in zip(*points.values()))
    slope, intercept = np.polyfit(logit(clean), logit(shifted), 1)
    predicted = expit(slope * logit(clean) + intercept)
    return {i: float(s - p) for i, s, p in zip(points, shifted, predicted)}, (float(slope), float(intercept))


def records(held: Robustness, jobs: list[Job]) -> list[dict]:
    """Per job, in job order, its measures as summary.csv/json columns ``robustness/<measure>`` (None: no file)."""
    empty = dict.fromkeys(MEASURES)
    return [{f"robustness/{k}": v for k, v in held.measures.get(i, empty).items()} for i in range(len(jobs))]


def data(held: Robustness) -> dict:
    """summary.json's ``robustness``: how mCE and effective robustness were computed, the notes, the observations."""
    return {
        "baseline": held.baseline,
        "baseline_jobs": [job.label for job in held.baseline_jobs],
        "mce_corruptions": held.corruptions,
        "fit": {"space": "logit", "slope": held.fit[0], "intercept": held.fit[1]} if held.fit else None,
        "notes": held.notes,
        "observations": held.observations,
    }


def _fixed(digits: int, scale: float = 1.0, sign: str = "") -> Callable[..., str]:
    """A cell formatter: the value (and ± its std) times ``scale`` at ``digits`` decimals."""

    def cell(value: float | None, std: float | None = None) -> str:
        if value is None:
            return MISSING
        text = f"{scale * value:{sign}.{digits}f}"
        return text if std is None else f"{text} ± {scale * std:.{digits}f}"

    return cell


# The tables' columns: (measure, header, cell formatter taking the value and optionally its std over seeds).
ACCURACY_COLUMNS = (
    ("clean_acc", "Clean Accuracy", percent),
    ("mean_corruption_acc", "Mean Corruption Accuracy", percent),
    ("relative_robustness", "Relative Robustness", _fixed(3)),
    ("shifted_acc", "Shifted Accuracy", percent),
    ("mce", "mCE (baseline 100)", _fixed(1)),
    ("effective_robustness", "Effective Robustness (points)", _fixed(2, 100, "+")),
)
CALIBRATION_COLUMNS = (
    ("ece_clean", "ECE Clean", _fixed(3)),
    ("ece_clean_scaled", "ECE Clean, Temperature-Scaled", _fixed(3)),
    ("ece_shifted", "ECE Shifted", _fixed(3)),
    ("nll_clean", "NLL Clean", _fixed(3)),
    ("nll_shifted", "NLL Shifted", _fixed(3)),
    ("brier_clean", "Brier Clean", _fixed(3)),
    ("brier_shifted", "Brier Shifted", _fixed(3)),
)


def job_table(held: Robustness, columns: tuple) -> Table:
    """A row per job with a robustness.json: the measures ``columns`` name."""
    rows = [[job.label, *(cell(held.measures[i][key]) for key, _, cell in columns)] for i, job, _ in held.found]
    return Table(["Job", *(header for _, header, _ in columns)], rows, [False] * len(rows))


def seed_table(held: Robustness) -> Table | None:
    """The accuracy measures' mean ± std over the seeds of each setting (None when seed is not swept)."""
    position = {job.dir: i for i, job, _ in held.found}
    groups = seed_groups([job for _, job, _ in held.found])
    if not groups:
        return None
    rows = []
    for label, group in groups.items():
        numbers = [held.measures[position[job.dir]] for job in group]
        cells = [
            cell(*mean_std([v for m in numbers if (v := m[key]) is not None])) for key, _, cell in ACCURACY_COLUMNS
        ]
        rows.append([label, str(len(group)), *cells])
    headers = ["Setting (seeds pooled)", "Seeds", *(header for _, header, _ in ACCURACY_COLUMNS)]
    return Table(headers, rows, [False] * len(rows))


def details_table(held: Robustness) -> Table:
    """What each evaluation ran on: split, images, native size, weights, temperature, the other scaled numbers."""
    headers = [
        "Job",
        "Split",
        "Images",
        "Native Size",
        "Weights Epoch",
        "Temperature",
        "ECE Shifted, Temperature-Scaled",
        "NLL Clean, Temperature-Scaled",
        "Brier Clean, Temperature-Scaled",
        "Evaluation Time",
    ]
    three = _fixed(3)
    rows = []
    for i, job, report in held.found:
        scaled, size = report.get("clean_scaled") or {}, report.get("native_size")
        rows.append(
            [
                job.label,
                str(report.get("split") or MISSING),
                MISSING if report.get("images") is None else f"{report['images']:,}",
                f"{size[0]}×{size[1]} px" if size else MISSING,
                str(report.get("weights_epoch", MISSING)),
                _fixed(2)(report.get("temperature")),
                three(held.measures[i]["ece_shifted_scaled"]),
                three(scaled.get("nll")),
                three(scaled.get("brier")),
                duration(report.get("seconds")),
            ]
        )
    return Table(headers, rows, [False] * len(rows))


def observations(held: Robustness) -> list[str]:
    """The job with the highest shifted accuracy, effective robustness and lowest mCE, and whether the most accurate
    job on clean data is also the most accurate under shift."""
    scored = [
        (job, m)
        for i, job, _ in held.found
        if (m := held.measures[i])["clean_acc"] is not None and m["shifted_acc"] is not None
    ]
    if not scored:
        return []
    job, m = max(scored, key=lambda s: s[1]["shifted_acc"])
    if len(scored) == 1:
        return [f"Under shift: {job.label} {percent(m['shifted_acc'])} ({percent(m['clean_acc'])} clean)."]
    parts = [f"Highest shifted accuracy: {job.label} at {percent(m['shifted_acc'])} ({percent(m['clean_acc'])} clean)"]
    robust = [(j, n) for j, n in scored if n["effective_robustness"] is not None]
    if robust:
        best, n = max(robust, key=lambda s: s[1]["effective_robustness"])
        parts.append(
            f"highest effective robustness: {best.label}, {100 * n['effective_robustness']:+.2f} points above the "
            "sweep's trend at its clean accuracy"
        )
    rated = [(j, n) for j, n in scored if n["mce"] is not None]
    if len(rated) > 1:
        best, n = min(rated, key=lambda s: s[1]["mce"])
        parts.append(f"lowest mCE: {best.label} ({n['mce']:.1f}; baseline {held.baseline} = 100)")
    lines = ["; ".join(parts) + "."]
    top, t = max(scored, key=lambda s: s[1]["clean_acc"])
    verdict = (
        "is also the most accurate under shift"
        if top is job
        else f"is not the most accurate under shift: {percent(t['shifted_acc'])} against {job.label}'s "
        f"{percent(m['shifted_acc'])}"
    )
    lines.append(f"The most accurate job on clean data, {top.label} ({percent(t['clean_acc'])}), {verdict}.")
    return lines


def section(held: Robustness, root: Path, figures: list[FigureEntry]) -> Section:
    """ "Does it hold up?": the observations, the table with its definitions and notes, the shifts some jobs could
    not take, the table over seeds, the evaluation details (collapsed), the figures, each job's reliability
    diagram linked."""
    blocks: list = [Paragraphs(held.observations)] if held.observations else []
    blocks.append(TableBlock(job_table(held, ACCURACY_COLUMNS), "Accuracy under shift, per job", id="robustness-table"))
    blocks.append(TableBlock(job_table(held, CALIBRATION_COLUMNS), "Calibration, per job", id="calibration-table"))
    blocks.append(Paragraphs([_definitions(held), *held.notes], bullets=False))
    skipped = [
        f"{job.label}: " + "; ".join(f"{s['shift']} ({s.get('reason') or 'no reason given'})" for s in shifts)
        for _, job, report in held.found
        if (shifts := report.get("skipped"))
    ]
    if skipped:
        blocks.append(Paragraphs(["Shifts a job could not take (left out of its means):"], bullets=False))
        blocks.append(Paragraphs(skipped))
    seeds = seed_table(held)
    if seeds:
        blocks.append(TableBlock(seeds, "Mean ± std over seeds"))
    blocks.append(TableBlock(details_table(held), "Evaluation details", collapsed=True))
    blocks += figures
    links = [
        (job.label, path.relative_to(root).as_posix())
        for _, job, _ in held.found
        if (path := artefact(job, ArtifactKind.RELIABILITY_PLOT))
    ]
    if links:
        intro = "Each job's reliability diagram (clean test data, before and after temperature scaling):"
        blocks.append(Links(intro, links))
    return Section(HEADING, blocks)


def _definitions(held: Robustness) -> str:
    """What the table's columns mean, with this sweep's baseline and corruption count."""
    text = (
        "Clean: the test split as it is; shifted: the mean over every shift and level evaluated. Relative robustness "
        "= mean corruption accuracy / clean accuracy."
    )
    if held.corruptions:
        jobs = len(held.baseline_jobs)
        text += (
            " mCE (Hendrycks & Dietterich 2019): per corruption, the job's error summed over severities divided by "
            f"the baseline's ({held.baseline}"
            + (f", the mean over its {jobs} jobs" if jobs > 1 else "")
            + f"), averaged over {len(held.corruptions)} corruptions, × 100; below 100: fewer errors than the baseline."
        )
    if held.fit:
        text += (
            " Effective robustness (Taori et al. 2020): the shifted accuracy minus what a line fitted to all jobs' "
            "(clean, shifted) accuracies in logit space predicts at the job's clean accuracy, in accuracy points."
        )
    return text + (
        " ECE, NLL, Brier: expected calibration error, negative log-likelihood, Brier score (lower is better); "
        "temperature-scaled: the logits divided by a temperature fitted on the validation split."
    )


def _percent_axis(axis) -> None:
    """A logit-scaled axis with evenly chosen ticks labelled in percent (no minor ticks)."""
    axis.set_major_locator(MaxNLocator(6))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))
    axis.set_minor_locator(NullLocator())


def _logit_limits(values: list[float]) -> tuple[float, float]:
    """The range of ``values`` widened by a margin in logit space."""
    low, high = logit(min(values)), logit(max(values))
    margin = max(0.15 * (high - low), 0.1)
    return float(expit(low - margin)), float(expit(high + margin))


def accuracy_figure(held: Robustness) -> Figure | None:
    """Shifted against clean accuracy, one point per job in its style and labelled, on logit axes (where the fitted
    trend is a straight line, drawn when there is one), with the no-loss diagonal."""
    points = [
        (i, job, m["clean_acc"], m["shifted_acc"])
        for i, job, _ in held.found
        if (m := held.measures[i])["clean_acc"] is not None and m["shifted_acc"] is not None
    ]
    if not points:
        return None
    fig = Figure(figsize=(8, 5.6), layout="constrained")
    ax = fig.add_subplot()
    texts, xs, ys = [], [], []
    for i, job, clean, shifted in points:
        style = job_style(i)
        clean, shifted = (float(np.clip(v, LOGIT_CLIP, 1 - LOGIT_CLIP)) for v in (clean, shifted))
        ax.plot(clean, shifted, style.marker, ms=8, color=style.color)
        texts.append(ax.text(clean, shifted, job.label, fontsize=8))
        xs.append(clean)
        ys.append(shifted)
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    (x_low, x_high), (y_low, y_high) = _logit_limits(xs), _logit_limits(ys)
    grid = expit(np.linspace(logit(x_low), logit(x_high), 100))
    ax.plot(grid, grid, ":", color="0.5", lw=1, label="shifted = clean")
    if held.fit:
        slope, intercept = held.fit
        trend = expit(slope * logit(grid) + intercept)
        ax.plot(grid, trend, "-", color="0.3", lw=1, label=f"trend: logit fit over {len(points)} jobs")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    _percent_axis(ax.xaxis)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("Clean test accuracy (logit axis)")
    ax.set_ylabel("Shifted accuracy, mean over shifts (logit axis)")
    ax.set_title("Accuracy under shift against clean accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    place_labels(ax, texts, xs, ys)
    return fig


def _shift_rows(held: Robustness) -> list[tuple[str, str, list[float]]]:
    """(group, shift, accuracy per found job: the mean over the shift's levels, NaN where it did not run), grouped
    in the suite's group order, each group's shifts in the order the jobs list them."""
    accuracies: dict[tuple[str, str], dict[int, list[float]]] = {}
    for i, _, report in held.found:
        for row in report.get("shifts") or []:
            accuracies.setdefault((row["group"], row["shift"]), {}).setdefault(i, []).append(row["acc"])
    rank = {group: r for r, group in enumerate(GROUPS)}
    keys = sorted(accuracies, key=lambda k: rank.get(k[0], len(GROUPS)))
    return [
        (group, shift, [float(np.mean(accuracies[group, shift].get(i, np.nan))) for i, _, _ in held.found])
        for group, shift in keys
    ]


def shift_figure(held: Robustness) -> Figure | None:
    """A heatmap of test accuracy, a row per shift (the mean over its levels; clean data first, groups named on the
    right) and a column per job, every cell annotated ("skipped" where the job could not take the shift)."""
    rows = _shift_rows(held)
    if not rows:
        return None
    clean = [held.measures[i]["clean_acc"] for i, _, _ in held.found]
    values = 100 * np.array([[np.nan if c is None else c for c in clean], *(accs for _, _, accs in rows)], float)
    skipped = [{s["shift"] for s in report.get("skipped") or []} for _, _, report in held.found]
    names = ["clean (no shift)", *(shift for _, shift, _ in rows)]
    fig = Figure(figsize=(max(7.0, 3.5 + 1.3 * len(held.found)), 2.6 + 0.3 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    cmap, norm = colormaps["viridis"].with_extremes(bad="0.92"), Normalize(np.nanmin(values), np.nanmax(values))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for (r, c), value in np.ndenumerate(values):
        if np.isnan(value):
            text, colour = ("skipped" if names[r] in skipped[c] else MISSING), "0.3"
        else:
            red, green, blue, _ = cmap(norm(value))
            text, colour = f"{value:.1f}", "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
        ax.text(c, r, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xticks(range(len(held.found)), [tick_label(job) for _, job, _ in held.found], fontsize=8)
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    groups = ["", *(group for group, _, _ in rows)]
    starts = [r for r in range(1, len(groups)) if groups[r] != groups[r - 1]]
    for start in starts:
        ax.axhline(start - 0.5, color="white", lw=3)
    ends = [*starts[1:], len(groups)]
    side = ax.secondary_yaxis("right")
    side.set_yticks([(s + e - 1) / 2 for s, e in zip(starts, ends)], [groups[s].replace("_", " ") for s in starts])
    side.tick_params(length=0, labelsize=9)
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.5, aspect=40, label="Test accuracy (%)")
    ax.set_title("Test accuracy (%) per shift (mean over its levels) and job", fontsize=10)
    return fig


def wise_curves(held: Robustness) -> list[tuple[int, str, list[float], dict[str, list[float | None]]]]:
    """(style index, label, alphas, {"clean_acc": [...], "shifted_acc": [...]}) per job with a WiSE curve, or, when
    seeds are swept, per setting: the mean over its seeds (a band of 15 seed lines says less than 5 means)."""
    curves = [(i, job, report["wise"]) for i, job, report in held.found if report.get("wise")]
    groups = seed_groups([job for _, job, _ in curves])
    if not groups:
        return [(i, job.label, [p["alpha"] for p in wise], _wise_columns([wise])) for i, job, wise in curves]
    by_job = {id(job): (i, wise) for i, job, wise in curves}
    drawn = []
    for label, members in groups.items():
        (first, _), wises = by_job[id(members[0])], [by_job[id(job)][1] for job in members]
        alphas = [p["alpha"] for p in wises[0]]
        if any([p["alpha"] for p in wise] != alphas for wise in wises):
            return [(i, job.label, [p["alpha"] for p in wise], _wise_columns([wise])) for i, job, wise in curves]
        drawn.append((first, f"{label} (mean of {len(wises)} seeds)", alphas, _wise_columns(wises)))
    return drawn


def _wise_columns(wises: list[list[dict]]) -> dict[str, list[float | None]]:
    """Each measure along the curve, the mean over ``wises`` (None where a curve has none)."""
    columns = {}
    for key in ("clean_acc", "shifted_acc"):
        values = [[p[key] for p in wise] for wise in wises]
        columns[key] = [None if None in at else statistics.fmean(at) for at in zip(*values)]
    return columns


def wise_figure(held: Robustness) -> Figure | None:
    """Accuracy along the WiSE-FT interpolation (clean solid, shifted dashed; a colour and marker per job, or per
    setting with seeds swept: the mean over its seeds), for the jobs that evaluated one."""
    curves = wise_curves(held)
    if not curves:
        return None
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    ax = fig.add_subplot()
    legend, drawn = {}, {}
    for i, label, alphas, columns in curves:
        style = job_style(i).line()
        for key, linestyle, name in (("clean_acc", "-", label), ("shifted_acc", "--", f"{label} shifted")):
            accuracy = [np.nan if value is None else 100 * value for value in columns[key]]
            (line,) = ax.plot(alphas, accuracy, **{**style, "linestyle": linestyle})
            legend.setdefault(label, line)  # its clean line
            drawn[name] = np.array([alphas, accuracy])
    shifts = next(report.get("wise_shifts") for _, _, report in held.found if report.get("wise")) or "shifted"
    legend["clean test data"] = Line2D([], [], color="0.3", linestyle="-")
    legend[f"shifted: {shifts}"] = Line2D([], [], color="0.3", linestyle="--")
    titled(ax, "Accuracy along the WiSE-FT weight interpolation", drawn)
    ax.set_xlabel("α: weight of the fine-tuned backbone (0: the backbone the job started from, 1: fine-tuned)")
    ax.set_ylabel("Accuracy (%)")
    ax.grid(alpha=0.3)
    job_legend(fig, legend)
    return fig


def run_blocks(report: dict) -> list:
    """The run report's view of one robustness.json: what it measured in a few sentences, accuracy per shift and
    level, and the WiSE curve (the reliability diagram is embedded by the run report from the index)."""
    clean, scaled = report["clean"], report["clean_scaled"]
    lines = [f"Clean test accuracy {percent(clean['acc'])} on {report['images']:,} test images."]
    if report.get("mean_corruption_acc") is not None:
        lines.append(
            f"Mean over the ImageNet-C corruptions {percent(report['mean_corruption_acc'])} (relative robustness "
            f"{report['relative_robustness']:.3f}); mean over every shift {percent(report['shifted_acc'])}."
        )
    lines.append(
        f"ECE {percent(clean['ece'])} clean, {percent(scaled['ece'])} after temperature scaling (T = "
        f"{report['temperature']:.2f}, fitted on validation)"
        + (f"; {percent(report['shifted']['ece'])} under shift." if report.get("shifted") else ".")
    )
    lines += [f"Not evaluated: {s['shift']} ({s['reason']})" for s in report.get("skipped", [])]
    levels = max((r["level"] for r in report["shifts"]), default=0)
    rows = []
    for name in dict.fromkeys(r["shift"] for r in report["shifts"]):
        accs = {r["level"]: r["acc"] for r in report["shifts"] if r["shift"] == name}
        group = next(r["group"] for r in report["shifts"] if r["shift"] == name)
        cells = [percent(accs[lv]) if lv in accs else MISSING for lv in range(1, levels + 1)]
        rows.append([name, group.replace("_", " "), *cells, percent(float(np.mean(list(accs.values()))))])
    blocks: list = [Paragraphs(lines)]
    if rows:
        headers = ["Shift", "Group", *(f"Level {lv}" for lv in range(1, levels + 1)), "Mean"]
        blocks.append(
            TableBlock(Table(headers, rows, [False] * len(rows)), "Test accuracy per shift and level", id="shift-table")
        )
    if report.get("wise"):
        wise = [[f"{p['alpha']:g}", percent(p["clean_acc"]), percent(p["shifted_acc"])] for p in report["wise"]]
        headers = [
            "α (0: start backbone, 1: fine-tuned)",
            "Clean accuracy",
            f"Shifted accuracy ({report['wise_shifts']})",
        ]
        blocks.append(
            TableBlock(Table(headers, wise, [False] * len(wise)), "WiSE-FT weight interpolation", id="wise-table")
        )
    return blocks
