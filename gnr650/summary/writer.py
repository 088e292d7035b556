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
from gnr650.summary import attention, changes, figures, tables
from gnr650.summary.collect import Job, collect_jobs
from gnr650.summary.report import FigureEntry, render

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What `write_summary` found and wrote."""

    multirun_dir: Path
    jobs: list[Job]
    files: list[Path] = field(default_factory=list)

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
    _write(summary, "summary.csv", tables.to_csv(records))
    data = {"multirun_dir": str(root), "swept": swept, "jobs": records, "seed_aggregate": seeds or None}
    _write(summary, "summary.json", json.dumps(data, indent=2, default=str) + "\n")

    attentions = attention.load_attention(jobs)
    drawn = [entry for entry in _figures(jobs, attentions) if entry is not None]
    entropy = _draw(
        "attention_entropy.png",
        "Entropy of the CLS token's attention over patches per layer in the exported attention maps "
        "(head mean, averaged over the exported images): lower means sharper.",
        attention.entropy_figure,
        attentions,
    )
    sections = _sections(summary, jobs, data, [entropy] if entropy else [])
    if entropy and not sections:  # no "What changed" section to hold it
        drawn.append(entropy)
    for entry in drawn:
        _write(summary, entry.name, entry.png)

    title = f"Summary of {root.resolve().name}"
    meta = _meta(jobs, swept)
    job_table, seed_table = tables.job_table(jobs), tables.seed_table(jobs)
    named_tables = [("Jobs", job_table)] + ([("Mean ± std over seeds", seed_table)] if seed_table else [])
    if sections:  # rewritten with the section's numbers (the tables were written first, before any figure)
        summary.files.remove(summary.multirun_dir / "summary.json")
        _write(summary, "summary.json", json.dumps(data, indent=2, default=str) + "\n")
    _write(summary, "summary.md", _markdown(title, meta, named_tables, drawn, sections))
    _write(summary, "report.html", render(title, meta, named_tables, drawn, sections))
    return summary


def _sections(summary: Summary, jobs: list[Job], data: dict, more: list[FigureEntry]) -> list:
    """The "What changed" section (figures written beside the others, numbers added to summary.json), with
    ``more`` figures after its own (the exported maps' attention entropy); a failure there costs that section only."""
    try:
        changed = changes.section(jobs)
    except Exception:
        log.exception("Could not build the 'What changed' section")
        return []
    if changed is None:
        return []
    drawn = [e for name, caption, fig in changed.figures if (e := _draw(name, caption, lambda f=fig: f)) is not None]
    drawn += more
    for entry in drawn:
        _write(summary, entry.name, entry.png)
    data["what_changed"] = changed.data
    return [(changed.heading, changed.lines, changed.tables, drawn)]


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


def _markdown(title: str, meta: list[str], named_tables, drawn: list[FigureEntry], sections=()) -> str:
    parts = [f"# {title}", *meta]
    for heading, table in named_tables:
        parts += [f"## {heading}", tables.markdown(table)]
    parts += [f"![{entry.caption}]({entry.name})" for entry in drawn]
    for heading, lines, section_tables, section_figures in sections:
        parts += [f"## {heading}", *(f"- {line}" for line in lines)]
        for sub, table in section_tables:
            parts += [f"### {sub}", tables.markdown(table)]
        parts += [f"![{entry.caption}]({entry.name})" for entry in section_figures]
    return "\n\n".join(parts) + "\n"


def _write(summary: Summary, name: str, content: str | bytes) -> None:
    """Write atomically, so a reader (or a concurrent summary) never sees half a file."""
    data = content.encode() if isinstance(content, str) else content
    summary.files.append(atomic_write(summary.multirun_dir / name, lambda tmp: Path(tmp).write_bytes(data)))
