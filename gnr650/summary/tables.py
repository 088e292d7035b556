"""The comparison table: raw rows (CSV/JSON) and formatted rows (Markdown/HTML).

Failed and unfinished jobs stay in every table as rows marked with their error; completed jobs that warned (e.g.
did not learn) as rows marked with the warning.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from gnr650.summary import significance
from gnr650.summary.collect import Job, format_label

ACCURACIES = (
    ("train/acc", "Train Accuracy"),
    ("val/acc", "Validation Accuracy"),
    ("test/acc", "Test Accuracy"),
)
MISSING = "—"


@dataclass
class Table:
    """Display-ready cells; `failed[i]` and `warned[i]` mark rows to highlight; `links[column][row]`: the relative
    href of a cell shown as a link (None: plain)."""

    headers: list[str]
    rows: list[list[str]]
    failed: list[bool]
    warned: list[bool] = field(default_factory=list)
    links: dict[int, list[str | None]] = field(default_factory=dict)


def job_records(jobs: list[Job]) -> list[dict]:
    """One flat record per job with raw numbers (accuracies as fractions)."""
    records = []
    for job in jobs:
        params = job.results.get("params") or {}
        timing = job.results.get("timing") or {}
        records.append(
            {
                "job": job.num,
                "label": job.label,
                **job.swept,
                "status": job.status,
                "error": job.error,
                "warnings": "; ".join(job.warnings) or None,
                **{name: job.metric(name) for name, _ in ACCURACIES},
                "trainable_params": params.get("trainable"),
                "total_params": params.get("total"),
                "fit_s": timing.get("fit_s"),
                "total_s": timing.get("total_s"),
                "images_per_s": job.results.get("throughput"),
                "peak_memory_mb": job.results.get("peak_memory"),
                "run_dir": str(job.dir),
            }
        )
    return records


def seed_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by their swept overrides other than `seed`; empty when seed is not swept."""
    if not any("seed" in job.swept for job in jobs):
        return {}
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        rest = format_label({k: v for k, v in job.swept.items() if k != "seed"})
        groups.setdefault(rest or "all", []).append(job)
    return groups


def seed_records(jobs: list[Job]) -> list[dict]:
    """Mean and sample std over the completed seeds of each group."""
    records = []
    for label, group in seed_groups(jobs).items():
        done = [j for j in group if j.ok]
        record = {
            "label": label,
            "seeds": [j.swept.get("seed") for j in group],
            "completed": len(done),
            "jobs": len(group),
        }
        for name, _ in ACCURACIES:
            record[f"{name}_mean"], record[f"{name}_std"] = mean_std(
                [v for j in done if (v := j.metric(name)) is not None]
            )
        fits = [(j.results.get("timing") or {}).get("fit_s") for j in done]
        record["fit_s_mean"], record["fit_s_std"] = mean_std([f for f in fits if f is not None])
        records.append(record)
    return records


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


LOOKUP_NOTE = "train accuracy is a lookup of its own stored train set (memorised), not a fit"


def job_table(jobs: list[Job], root: Path, intervals: dict[Path, tuple[float, float]]) -> Table:
    """The reference table, one row per job: accuracies, the test accuracy's 95% interval (``intervals`` by job
    directory), parameters, fit time, speed, memory, status and the job's folder (its report.html when it has one),
    linked relative to ``root``."""
    headers = [
        "Job",
        *(title for _, title in ACCURACIES),
        "Test 95% Wilson interval",
        "Trainable Params",
        "Fit Time",
        "Images/s",
        "Peak Memory",
        "Status",
        "Folder",
    ]
    rows, links = [], []
    for job, rec in zip(jobs, job_records(jobs)):
        notes = "".join(f", warning: {w}" for w in job.warnings) + (f", note: {LOOKUP_NOTE}" if job.lookup else "")
        status = job.status + notes if job.ok else f"{job.status}: {job.error}"
        folder = job.dir.relative_to(root).as_posix()  # "." for a job run in root itself
        target = f"{folder}/report.html" if (job.dir / "report.html").is_file() else f"{folder}/"
        links.append(target)
        rows.append(
            [
                job.label,
                *(percent(rec[name]) for name, _ in ACCURACIES),
                interval(*intervals[job.dir]) if job.dir in intervals else MISSING,
                params(rec["trainable_params"], rec["total_params"]),
                duration(rec["fit_s"]),
                MISSING if rec["images_per_s"] is None else f"{rec['images_per_s']:,.0f}",
                MISSING if rec["peak_memory_mb"] is None else f"{rec['peak_memory_mb']:,.0f} MB",
                status,
                target,
            ]
        )
    failed, warned = [not j.ok for j in jobs], [j.ok and bool(j.warnings) for j in jobs]
    return Table(headers, rows, failed, warned, links={len(headers) - 1: links})


def seed_table(jobs: list[Job]) -> Table | None:
    """Mean ± std over seeds per remaining label, or None when seed is not swept."""
    records = seed_records(jobs)
    if not records:
        return None
    headers = ["Setting (seeds pooled)", "Seeds completed", *(title for _, title in ACCURACIES), "Fit Time"]
    rows = [
        [
            r["label"],
            f"{r['completed']}/{r['jobs']}",
            *(percent(r[f"{n}_mean"], r[f"{n}_std"]) for n, _ in ACCURACIES),
            duration(r["fit_s_mean"]),
        ]
        for r in records
    ]
    return Table(headers, rows, [r["completed"] < r["jobs"] for r in records])


def percent(fraction: float | None, std: float | None = None) -> str:
    if fraction is None:
        return MISSING
    if std is None:
        return f"{100 * fraction:.2f}%"
    return f"{100 * fraction:.2f} ± {100 * std:.2f}%"


def interval(low: float, high: float) -> str:
    return f"{100 * low:.2f}–{100 * high:.2f}%"


def params(trainable: int | None, total: int | None) -> str:
    if trainable is None:
        return MISSING
    share = f" ({100 * trainable / total:.2f}%)" if total else ""
    return f"{trainable:,}{share}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def markdown(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table.headers), line(["---"] * len(table.headers)), *map(line, table.rows)])


def to_csv(records: list[dict]) -> str:
    """CSV of records whose keys may differ (swept keys): the union, in first-seen order."""
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def pairwise_table(pairs: list[dict]) -> Table:
    """Exact McNemar tests between jobs on the same test images (``significance.pairwise_rows``), Holm-corrected."""
    headers = ["Pair (A vs B)", "Only A right", "Only B right", "Exact McNemar p", "Holm p", "Significant at 5% (Holm)"]
    rows = [
        [
            f"{r['a']} vs {r['b']}",
            str(r["only_a"]),
            str(r["only_b"]),
            f"{r['p']:.3g}",
            f"{r['p_holm']:.3g}",
            "yes" if r["significant"] else "no",
        ]
        for r in pairs
    ]
    return Table(headers, rows, [False] * len(rows))


def seed_interval_table(jobs: list[Job]) -> Table | None:
    """Test accuracy across seeds per setting: mean ± std and the Student-t 95% interval (None: seed not swept)."""
    groups = {
        label: values
        for label, group in seed_groups(jobs).items()
        if (values := [v for j in group if (v := j.metric("test/acc")) is not None])
    }
    if not groups:
        return None
    rows = []
    for label, values in groups.items():
        bounds = significance.t_interval(values)
        mean, std = mean_std(values)
        rows.append([label, str(len(values)), percent(mean, std), interval(*bounds) if bounds else MISSING])
    headers = ["Setting (seeds pooled)", "Seeds", "Test Accuracy (mean ± std)", "95% Interval (t)"]
    return Table(headers, rows, [False] * len(rows))


def tuned_table(jobs: list[Job]) -> Table | None:
    """``protocol=tuned`` jobs: the learning rates chosen on validation, every trial's validation accuracy, and the
    test accuracy over the seeds trained at the choice (None: no tuned job)."""
    tuned = [job for job in jobs if job.ok and job.results.get("tuned")]
    if not tuned:
        return None
    rows = []
    for job in tuned:
        t = job.results["tuned"]
        chosen, test = t["chosen"], t["test_acc"]
        trials = " · ".join(
            f"x{trial['lr_scale']:g} {percent(trial['val_acc']) if trial['status'] == 'completed' else 'failed'}"
            for trial in t["trials"]
        )
        rows.append(
            [
                job.results.get("finetune") or job.label,
                f"{chosen['lr_head']:g} / {chosen['lr_backbone']:g} (x{chosen['lr_scale']:g})",
                trials,
                f"{percent(test['mean'], test['std'])} ({test['n']})",
                interval(test["low"], test["high"]) if test["low"] is not None else MISSING,
                duration(t["search_s"]),
                duration((job.results.get("timing") or {}).get("total_s")),
            ]
        )
    headers = [
        "Strategy",
        "Chosen LR head / backbone (scale)",
        "Validation Accuracy per Scale",
        "Test Accuracy (mean ± std, seeds)",
        "95% Interval (t)",
        "Search Time",
        "Total Time",
    ]
    return Table(headers, rows, [False] * len(rows))
