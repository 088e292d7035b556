"""Write every summary file of a multirun into its directory.

The tables are written first and each figure is drawn on its own, so one job's
broken artefact costs at most one figure, never the summary.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from gnr650.files import atomic_write
from gnr650.interpret.index import PHASE_END, ArtifactKind, artifacts_dir, find_artifacts
from gnr650.summary import attention, changes, explorer, figures, header, robustness, significance, tables
from gnr650.summary.collect import Job, collect_jobs
from gnr650.summary.report import (
    Document,
    FigureEntry,
    Links,
    Paragraphs,
    RawHtml,
    Section,
    TableBlock,
    render_html,
    render_markdown,
)

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What `write_summary` found and wrote."""

    multirun_dir: Path
    jobs: list[Job]
    files: list[Path] = field(default_factory=list)
    table: tables.Table | None = None  # the results table as the report shows it

    @property
    def failed(self) -> list[Job]:
        """Jobs that failed or did not finish."""
        return [job for job in self.jobs if not job.ok]


def write_summary(multirun_dir: str | Path) -> Summary:
    """Collect the jobs under `multirun_dir` and write summary.{md,csv,json}, figures and report.html."""
    root = Path(multirun_dir)
    jobs = collect_jobs(root)
    summary = Summary(root, jobs)
    records, seeds = tables.job_records(jobs), tables.seed_records(jobs)
    swept = list(jobs[0].swept) if jobs else []
    held = _holds_up(jobs)
    for record, numbers in zip(records, robustness.records(held, jobs) if held else []):
        record.update(numbers)
    _write(summary, "summary.csv", tables.to_csv(records))
    data = {"multirun_dir": str(root), "swept": swept, "jobs": records, "seed_aggregate": seeds or None}
    if held:
        data["robustness"] = robustness.data(held)
    _write(summary, "summary.json", json.dumps(data, indent=2, default=str) + "\n")

    predictions = significance.load_predictions(jobs)
    accuracy, pairs = significance.accuracy_rows(predictions), significance.pairwise_rows(predictions)
    attentions = attention.load_attention(jobs)
    drawn = [entry for entry in (*_figures(jobs, attentions), *_robustness_figures(held)) if entry is not None]
    entropy = _draw(
        "attention_entropy.png",
        "Entropy in nats of the CLS token's attention over the patches per layer, per head and then averaged over "
        "the heads and the exported images (as analysis.json's attention entropy); the dotted line is uniform "
        "attention, ln(patches). Lower means sharper.",
        attention.entropy_figure,
        attentions,
    )
    changed = _what_changed(jobs)
    changed_figures = [
        e for name, caption, fig in (changed.figures if changed else []) if (e := _draw(name, caption, lambda f=fig: f))
    ]
    drawn += changed_figures + ([entropy] if entropy else [])
    for entry in drawn:
        _write(summary, entry.name, entry.png)
    if changed or accuracy or pairs:  # rewritten with these numbers (the tables were written first, before any figure)
        data["what_changed"] = {"accuracy_intervals": accuracy, "pairwise": pairs, **(changed.data if changed else {})}
        summary.files.remove(summary.multirun_dir / "summary.json")
        _write(summary, "summary.json", json.dumps(data, indent=2, default=str) + "\n")

    intervals = {Path(row["run_dir"]): (row["low"], row["high"]) for row in accuracy}
    summary.table = tables.job_table(jobs, root, intervals)
    doc = Document(
        header.title(jobs, swept),
        header.header(jobs),
        _sweep_sections(root, jobs, swept, summary.table, pairs, changed, drawn, attentions, held),
    )
    _write(summary, "summary.md", render_markdown(doc))
    _write(summary, "report.html", render_html(doc))
    return summary


# Where each figure of `_figures` and of "What changed" goes in the report (any other: a last "More figures").
RESULTS, OBSERVATIONS, CURVES, CHANGED, PER_CLASS, ATTENTION = (
    "Results",
    "Observations",
    "Learning curves",
    "What changed",
    "Per-class detail",
    "Attention",
)
HOLDS_UP = robustness.HEADING
FIGURE_SECTION = {
    "accuracy.png": RESULTS,
    "params_accuracy.png": RESULTS,
    "curves.png": CURVES,
    "robustness_accuracy.png": HOLDS_UP,
    "robustness_shifts.png": HOLDS_UP,
    "robustness_wise.png": HOLDS_UP,
    "what_changed.png": CHANGED,
    "attention_entropy.png": CHANGED,
    "kernel_norms.png": CHANGED,
}


def _sweep_sections(
    root: Path,
    jobs: list[Job],
    swept: list[str],
    job_table: tables.Table,
    pairs: list[dict],
    changed: changes.Section | None,
    drawn: list[FigureEntry],
    attentions: list,
    held: robustness.Robustness | None,
) -> list[Section]:
    """Findings first: results (with intervals and the significant pairs), observations, learning curves, does it
    hold up (under shift), what changed, per-class detail, attention; the long tables collapsed."""
    attention_names = {attention.file_name(name) for name in attention.class_names(attentions)}
    placed: dict[str, list[FigureEntry]] = {}
    for entry in drawn:
        if entry.name not in attention_names:
            section = RESULTS if entry.name.startswith("accuracy_vs_") else FIGURE_SECTION.get(entry.name)
            placed.setdefault(section or "More figures", []).append(entry)

    results = Section(RESULTS, [Paragraphs(_meta(jobs, swept), bullets=False)])
    results.blocks.append(TableBlock(job_table, id="results-table"))
    seed_table, seed_intervals = tables.seed_table(jobs), tables.seed_interval_table(jobs)
    tuned = tables.tuned_table(jobs)
    if tuned:
        results.blocks.append(
            Paragraphs(
                [
                    "A protocol=tuned job chose its learning rate on validation alone (the test split is not evaluated "
                    "during the search), then trained once per seed at it: its row above is the mean over those "
                    "seeds, its fit time their sum."
                ],
                bullets=False,
            )
        )
        results.blocks.append(TableBlock(tuned, "Learning rates chosen on validation (protocol=tuned)"))
    if seed_table:
        results.blocks.append(TableBlock(seed_table, "Mean ± std over seeds"))
    if seed_intervals:
        results.blocks.append(TableBlock(seed_intervals, "Test accuracy across seeds"))
    results.blocks += _significance_blocks(jobs, pairs)
    results.blocks += placed.pop(RESULTS, [])
    sections = [results, Section(OBSERVATIONS, [Paragraphs(_observations(jobs, pairs, changed))])]
    if CURVES in placed:
        sections.append(Section(CURVES, placed.pop(CURVES)))
    if held:
        sections.append(robustness.section(held, root, placed.pop(HOLDS_UP, [])))
    if changed or CHANGED in placed:
        what = Section(CHANGED, placed.pop(CHANGED, []))
        what.blocks += [
            TableBlock(table, heading, collapsed=True) for heading, table in (changed.tables if changed else [])
        ]
        sections.append(what)
    per_class = _per_class_section(root, jobs)
    if per_class:
        sections.append(per_class)
    attention_section = _attention_section(attentions, drawn)
    if attention_section:
        sections.append(attention_section)
    sections += [Section(heading, entries) for heading, entries in placed.items()]
    return sections


def _significance_blocks(jobs: list[Job], pairs: list[dict]) -> list:
    """Per job, the jobs it beats significantly (shown); the significant pairs and every pair in collapsed tables."""
    if not pairs:
        return []
    significant = [p for p in pairs if p["significant"]]
    intro = f"Exact McNemar tests on the same test images, Holm-corrected over {len(pairs)} pairs: " + (
        f"{len(significant)} differ significantly at 5%." if significant else "no pair differs significantly at 5%."
    )
    beats: dict[str, list[str]] = {}
    for p in significant:
        winner, loser = (p["a"], p["b"]) if p["only_a"] > p["only_b"] else (p["b"], p["a"])
        beats.setdefault(winner, []).append(loser)
    order = [j.label for j in jobs if j.label in beats]
    lines = [f"{label} is more accurate than {', '.join(beats[label])}." for label in order]
    blocks: list = [Paragraphs([intro], bullets=False)] + ([Paragraphs(lines)] if lines else [])
    if significant:
        table = tables.pairwise_table(significant)
        blocks.append(TableBlock(table, "Significant pairs (Holm p < 0.05)", collapsed=len(significant) > 8))
    if len(significant) < len(pairs):
        blocks.append(
            TableBlock(tables.pairwise_table(pairs), "Pairwise tests on the same test images", collapsed=True)
        )
    return blocks


def _observations(jobs: list[Job], pairs: list[dict], changed: changes.Section | None) -> list[str]:
    """Measured statements: the best job on test and by how much (and whether that is significant), jobs whose test
    predictions are identical, the train - validation gap, the lookup caveat; then the analysis's observations."""
    lines = []
    scored = sorted((j for j in jobs if j.ok and j.metric("test/acc") is not None), key=lambda j: -j.metric("test/acc"))
    if len(scored) > 1:
        best, second = scored[0], scored[1]
        margin = 100 * (best.metric("test/acc") - second.metric("test/acc"))
        pair = next((p for p in pairs if {p["a"], p["b"]} == {best.label, second.label}), None)
        verdict = "significant" if pair and pair["significant"] else "not significant"
        test = f" (exact McNemar, Holm p = {pair['p_holm']:.3g}: {verdict} at 5%)" if pair else ""
        lines.append(
            f"Best on test: {best.label} at {tables.percent(best.metric('test/acc'))}, {margin:.2f} points above "
            f"the next, {second.label} ({tables.percent(second.metric('test/acc'))}){test}."
        )
    elif scored:
        lines.append(f"Test accuracy: {scored[0].label} {tables.percent(scored[0].metric('test/acc'))}.")
    identical = [f"{p['a']} and {p['b']}" for p in pairs if p["only_a"] == p["only_b"] == 0]
    if identical:
        lines.append("Identical test predictions (no image where they differ): " + "; ".join(identical) + ".")
    gaps = [
        (j, 100 * (j.metric("train/acc") - j.metric("val/acc")))
        for j in jobs
        if j.ok and j.metric("train/acc") is not None and j.metric("val/acc") is not None
    ]
    if gaps:
        lines.append(
            "Train − validation accuracy gap in the final evaluation (points; large = overfitting): "
            + "; ".join(f"{j.label} {gap:+.2f}" + (" (lookup: memorised)" if j.lookup else "") for j, gap in gaps)
            + "."
        )
    lookups = [j.label for j in jobs if j.lookup]
    if lookups:
        lines.append(f"{', '.join(lookups)}: {tables.LOOKUP_NOTE}; compare such jobs on validation and test only.")
    return lines + (changed.lines if changed else [])


def _per_class_section(root: Path, jobs: list[Job]) -> Section | None:
    """Per-class test accuracy of every job (results.json; a row per class, a column per job) and a link to each
    job's confusion matrix figure."""
    done = [j for j in jobs if j.ok and ((j.results.get("per_class") or {}).get("test"))]
    links = [
        (job.label, path.relative_to(root).as_posix())
        for job in jobs
        for path in find_artifacts(artifacts_dir(job.dir), ArtifactKind.EVALUATION_PLOT, phase=PHASE_END)[-1:]
    ]
    if not done and not links:
        return None
    section = Section(PER_CLASS)
    if done:
        classes = list(done[0].results["per_class"]["test"])
        rows = [[c, *(tables.percent(j.results["per_class"]["test"].get(c)) for j in done)] for c in classes]
        table = tables.Table(["Class", *(j.label for j in done)], rows, [False] * len(rows))
        section.blocks.append(TableBlock(table, "Test accuracy per class"))
    if links:
        section.blocks.append(Links("Each job's test confusion matrix and per-class accuracy figure:", links))
    return section


def _attention_section(attentions: list, written: list[FigureEntry]) -> Section | None:
    """ "Attention": the explorer (class, layer, job, head; one page of data instead of a grid per class), then the
    per-class attention grids written beside the report, linked by class (not embedded: they were three quarters of
    the page's bytes)."""
    blocks: list = []
    try:
        fragment = explorer.explorer_section(attentions)
    except Exception:  # the grids below still show the attention
        log.exception("Could not build the attention explorer")
        fragment = None
    if fragment:
        blocks.append(RawHtml(fragment, "The attention explorer (class, layer, job, head) is in report.html."))
    names = {entry.name for entry in written}
    links = [(name, file) for name in attention.class_names(attentions) if (file := attention.file_name(name)) in names]
    if links:
        intro = "Per class, every layer of every job as one figure (a row per job, its rollout in the last row):"
        blocks.append(Links(intro, links))
    return Section(ATTENTION, blocks) if blocks else None


def _what_changed(jobs: list[Job]) -> changes.Section | None:
    """The analyses' "What changed" (observations, faithfulness table, per-layer figure); a failure there costs
    that section only."""
    try:
        return changes.section(jobs)
    except Exception:
        log.exception("Could not build the 'What changed' section")
        return None


def _holds_up(jobs: list[Job]) -> robustness.Robustness | None:
    """The jobs' robustness evaluations (None when no job has one); a failure there costs that section only."""
    try:
        return robustness.analyse(jobs)
    except Exception:
        log.exception("Could not read the jobs' robustness evaluations")
        return None


def _robustness_figures(held: robustness.Robustness | None):
    """Yield the "Does it hold up?" figures as FigureEntry (None when not drawn), as ``_figures`` does."""
    if not held:
        return
    trend = (
        "the line is the least-squares fit of logit(shifted) on logit(clean) accuracy over these jobs, as Taori et al. "
        "(2020) fit it; a job's effective robustness is its height above it"
        if held.fit
        else "no trend line: it needs at least 3 jobs with distinct clean accuracies"
    )
    yield _draw(
        "robustness_accuracy.png",
        "Shifted accuracy (the mean over every shift and level) against clean test accuracy, one point per job in "
        f"its style, both axes logit-scaled; {trend}. Dotted: no loss under shift.",
        robustness.accuracy_figure,
        held,
    )
    yield _draw(
        "robustness_shifts.png",
        "Test accuracy of each job (column) under each shift (row, the mean over its levels; grouped, clean data "
        'first); "skipped": the job could not take that shift.',
        robustness.shift_figure,
        held,
    )
    yield _draw(
        "robustness_wise.png",
        "WiSE-FT (Wortsman et al. 2022): accuracy with the backbone's weights interpolated between the job's start "
        "(α = 0) and its fine-tuned weights (α = 1), the fine-tuned classifier kept; clean test data solid, shifted "
        "dashed, one colour and marker per job.",
        robustness.wise_figure,
        held,
    )


def _figures(jobs: list[Job], attentions: list):
    """Yield each figure as a FigureEntry (None when it has no data or could not be drawn); each caption says
    only what its figure shows for these jobs."""
    yield _draw(
        "accuracy.png",
        "Train, validation and test accuracy of each job; failed jobs have no bars.",
        figures.accuracy_figure,
        jobs,
    )
    seeded = any(len(points) > 1 for points in figures.strategy_groups(jobs).values())
    yield _draw(
        "params_accuracy.png",
        "Test accuracy against trainable parameters per strategy"
        + (" (mean ± std over seeds)." if seeded else " (one run each)."),
        figures.params_accuracy_figure,
        jobs,
    )
    for key in figures.numeric_swept_keys(jobs):
        yield _draw(
            f"accuracy_vs_{key}.png",
            f"Test accuracy against {key}, one line per strategy (or other swept setting) in its jobs' style: the "
            "mean over seeds with its Student-t 95% interval (no bar for a single seed).",
            figures.swept_value_figure,
            jobs,
            key,
        )
    yield _draw(
        "curves.png",
        "Train and validation accuracy and loss per completed epoch (counted from 1), one line style per job; "
        "a horizontal line in the validation accuracy panel is a job without training (its final accuracy).",
        figures.curves_figure,
        jobs,
    )
    yield _draw(
        "kernel_norms.png",
        "Mean L2 norm of the output kernels of each conv layer at the end "
        "(band: ± std across kernels) and its ratio to the start, per job.",
        figures.kernel_norm_figure,
        jobs,
    )
    predicted = any(e.predictions is not None for e in attentions)
    for name in attention.class_names(attentions):
        yield _draw(
            attention.file_name(name),
            f"Class {name}: CLS-to-patch attention per layer (on the patch grid, each map min–max scaled), one row "
            "per job, and each job's attention rollout in the last row"
            + ("; under each image, whether the job classified it right." if predicted else "."),
            attention.class_figure,
            attentions,
            name,
        )


def _draw(name: str, caption: str, build: Callable[..., Figure | None], *args) -> FigureEntry | None:
    try:
        fig = build(*args)
        if fig is None:
            return None
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    except Exception:  # one broken figure must not cost the rest of the summary
        log.exception("Could not draw %s", name)
        return None
    return FigureEntry(name, caption, buffer.getvalue())


def _meta(jobs: list[Job], swept: list[str]) -> list[str]:
    counts = Counter(job.status for job in jobs)
    lines = [
        f"{len(jobs)} jobs: "
        + (", ".join(f"{n} {status}" for status, n in counts.items()) or "none found")
        + (f"; swept: {', '.join(swept)}." if swept else ".")
    ]
    warned = [job for job in jobs if job.ok and job.warnings]
    if warned:
        lines.append(
            f"{len(warned)} completed with a warning (Status column): " + ", ".join(job.label for job in warned) + "."
        )
    scored = [job for job in jobs if job.metric("val/acc") is not None]
    if scored:
        best = max(scored, key=lambda job: job.metric("val/acc"))
        lines.append(f"Best validation accuracy: {best.label} ({tables.percent(best.metric('val/acc'))}).")
    return lines


def _write(summary: Summary, name: str, content: str | bytes) -> None:
    """Write atomically, so a reader (or a concurrent summary) never sees half a file."""
    data = content.encode() if isinstance(content, str) else content
    summary.files.append(atomic_write(summary.multirun_dir / name, lambda tmp: Path(tmp).write_bytes(data)))
