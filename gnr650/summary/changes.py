"""The summary's "What changed" section: per-layer curves of every job's ``analysis.json`` (one line per job),
the faithfulness table, the seed's three observations restated as measured statements, and the significance
tables (95% intervals, exact McNemar with Holm correction, intervals across seeds).

Artefacts are found through each job's ``artifacts/index.json`` by kind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gnr650.interpret.index import PHASE_END, ArtifactKind, artifacts_dir, find_artifacts

from .collect import Job
from .figures import job_legend, job_style, titled
from .tables import Table

log = logging.getLogger(__name__)


@dataclass
class Section:
    """A report section: heading, statements, tables and (name, caption, figure builder) entries."""

    heading: str
    lines: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)
    figures: list[tuple[str, str, Figure]] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def artefact(job: Job, kind: ArtifactKind) -> Path | None:
    """The job's latest end-phase file of ``kind``, found through its artefact index."""
    paths = find_artifacts(artifacts_dir(job.dir), kind, phase=PHASE_END)
    return paths[-1] if paths else None


def load_analyses(jobs: list[Job]) -> list[tuple[int, Job, dict]]:
    """(position, job, analysis.json) of the completed jobs that wrote one."""
    return load_json_artefacts(jobs, ArtifactKind.ANALYSIS_JSON)


def load_json_artefacts(jobs: list[Job], kind: ArtifactKind) -> list[tuple[int, Job, dict]]:
    """(position, job, contents) of the completed jobs whose index lists a JSON file of ``kind``; an unreadable
    file is logged and skipped."""
    found = []
    for i, job in enumerate(jobs):
        path = artefact(job, kind) if job.ok else None
        if path is None:
            continue
        try:
            found.append((i, job, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            log.warning("Skipping unreadable %s: %s", path, exc)
    return found


def per_layer_figure(analyses: list[tuple[int, Job, dict]]) -> Figure | None:
    """Drift per block, CKA, end probe accuracy and mean attention distance (head mean), one line per job in its
    style; lines drawn over identical ones are named in the panel's title, the legend sits outside."""
    if not analyses:
        return None
    panels = [
        ("weight drift per block  ‖ΔW‖F / ‖W0‖F", lambda a: {b: a["weight_drift"][b] for b in a.get("blocks", [])}),
        ("linear CKA, start vs end", lambda a: a["cka"]),
        ("linear probe accuracy (end)", lambda a: {k: v["end"] for k, v in a["layer_probe"].items()}),
        (
            "mean attention distance (end, px, head mean)",
            lambda a: {k: float(np.mean(v["end"])) for k, v in a.get("attention_distance", {}).items()},
        ),
    ]
    fig = Figure(figsize=(12, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1)
    legend = {}
    for ax, (title, values_of) in zip(axes, panels):
        drawn = {}
        for i, job, analysis in analyses:
            values = values_of(analysis)
            if values:
                (legend[job.label],) = ax.plot(list(values), list(values.values()), **job_style(i).line())
                drawn[job.label] = np.array(list(values.values()), dtype=float)
        titled(ax, title, drawn)
        ax.set_xlabel("Layer (module name)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        ax.grid(alpha=0.3)
    job_legend(fig, legend)
    return fig


def faithfulness_table(analyses: list[tuple[int, Job, dict]]) -> Table | None:
    rows = []
    for _, job, analysis in analyses:
        faith = analysis.get("faithfulness") or {}
        for method in ("rollout", "gradcam", "random"):
            if method in faith:
                m = faith[method]
                rows.append(
                    [
                        job.label,
                        method,
                        f"{m['deletion_auc']:.3f}",
                        f"{m['insertion_auc']:.3f}",
                        str(m.get("images", "")),
                    ]
                )
    headers = ["Job", "Method", "Deletion AUC (lower: more faithful)", "Insertion AUC (higher)", "Images"]
    return Table(headers, rows, [False] * len(rows)) if rows else None


def _finetune(job: Job) -> str | None:
    return job.swept.get("finetune") or (job.results.get("finetune"))


def _others(job: Job) -> dict:
    return {k: v for k, v in job.swept.items() if k != "finetune"}


def observations(jobs: list[Job], analyses: list[tuple[int, Job, dict]]) -> list[str]:
    """The seed's three statements, each with the numbers that support or refute it."""
    lines = []
    # 1. "last-layer fine-tuning and no fine-tuning exhibit similar attention maps across all layers"
    pairs = [
        (a, b)
        for a in jobs
        for b in jobs
        if a.ok and b.ok and _finetune(a) == "last" and _finetune(b) == "frozen" and _others(a) == _others(b)
    ]
    for last, frozen in pairs:
        paths = [artefact(j, ArtifactKind.ATTENTION_NPZ) for j in (last, frozen)]
        if None in paths:
            continue
        with np.load(paths[0]) as za, np.load(paths[1]) as zb:
            diff = float(np.abs(za["cls_attention"] - zb["cls_attention"]).max())
            layers = za["cls_attention"].shape[1]
        lines.append(
            f"Last vs frozen attention maps ({last.label} vs {frozen.label}): max absolute difference of the CLS "
            f"attention over all {layers} layers, heads and exported images = {diff:.3g}"
            + (" (identical: the backbone is unchanged)." if diff == 0 else ".")
        )
    if not lines:
        lines.append(
            "Last vs frozen attention maps: not measurable here (needs a finetune=last and a finetune=frozen job)."
        )
    # 2. "the initial layers consistently show better attention maps": local vs global attention along depth.
    vit = [(job, a) for _, job, a in analyses if a.get("attention_distance")]
    if vit:
        parts, sharper = [], []
        for job, a in vit:
            blocks = list(a["attention_distance"])
            third = max(1, len(blocks) // 3)
            early = float(np.mean([np.mean(a["attention_distance"][b]["end"]) for b in blocks[:third]]))
            late = float(np.mean([np.mean(a["attention_distance"][b]["end"]) for b in blocks[-third:]]))
            ent_early = float(np.mean([a["attention_entropy"][b]["end"] for b in blocks[:third]]))
            ent_late = float(np.mean([a["attention_entropy"][b]["end"] for b in blocks[-third:]]))
            if ent_early < ent_late:
                sharper.append(job.label)
            parts.append(
                f"{job.label}: first {third} blocks {early:.1f} px / {ent_early:.2f} nats, "
                f"last {third} blocks {late:.1f} px / {ent_late:.2f} nats"
            )
        lines.append(
            "Early vs late layers (mean attention distance / CLS attention entropy, end weights): "
            + "; ".join(parts)
            + ". "
            + _sharper_early(sharper, len(vit))
        )
    # 3. "the all-layer fine-tuning maps are not as informative": rollout faithfulness (insertion - deletion AUC).
    scored = [
        (job, f["rollout"]["insertion_auc"] - f["rollout"]["deletion_auc"], f["random"])
        for _, job, a in analyses
        if "rollout" in (f := a.get("faithfulness") or {})
    ]
    if scored:
        text = "; ".join(
            f"{job.label} {score:+.3f} (random order {r['insertion_auc'] - r['deletion_auc']:+.3f})"
            for job, score, r in scored
        )
        full = [s for job, s, _ in scored if _finetune(job) == "full"]
        verdict = ""
        if full and len(scored) > 1:
            lowest = min(s for _, s, _ in scored)
            verdict = (
                " Full fine-tuning's rollout is the least faithful."
                if min(full) == lowest
                else (" Full fine-tuning's rollout is not the least faithful.")
            )
        lines.append(
            f"Attention-rollout faithfulness (insertion − deletion AUC, higher = more informative): {text}.{verdict}"
        )
    return lines


def _sharper_early(sharper: list[str], jobs: int) -> str:
    """The verdict on "early layers attend more sharply", worded for what was found (never "in 0 of N")."""
    claim = "Early CLS attention is sharper (lower entropy) than late"
    if not sharper:
        return claim.replace(" is ", " is not ") + (f" in any of the {jobs} jobs." if jobs > 1 else ".")
    if len(sharper) == jobs:
        return claim + (f" in all {jobs} jobs." if jobs > 1 else ".")
    return f"{claim} in {len(sharper)} of {jobs} jobs ({', '.join(sharper)}), not in the others."


def section(jobs: list[Job]) -> Section | None:
    """ "What changed" from the jobs' analyses; None when no job has one. (The significance tables: tables.py.)"""
    analyses = load_analyses(jobs)
    if not analyses:
        return None
    result = Section("What changed")
    result.lines = observations(jobs, analyses)
    table = faithfulness_table(analyses)
    if table:
        result.tables.append(("Faithfulness of explanations (deletion / insertion AUC)", table))
    fig = per_layer_figure(analyses)
    if fig is not None:
        epochs = ", ".join(f"{job.label}: end = epoch {a['epochs']['end']}" for _, job, a in analyses)
        result.figures.append(
            (
                "what_changed.png",
                "Per layer, one line per job: weight drift, linear CKA start vs end, linear-probe accuracy and "
                f"mean attention distance ({epochs}).",
                fig,
            )
        )
    result.data["observations"] = result.lines
    return result
