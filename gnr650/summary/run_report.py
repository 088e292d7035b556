"""report.html of one run, written by ``train()`` when the run ends (also each job of a sweep, linked from the
sweep's report): what was run, the results per split with the test accuracy's 95% interval, measured observations
(the train - validation gap: study 1's overfitting), learning curves, what changed, per-class detail, the exports.

It draws nothing: it embeds downscaled copies of the figures the run exported (found through artifacts/index.json
by kind) and links each full-resolution file and every other export, so it costs a second, not a summary.
"""

from __future__ import annotations

from pathlib import Path

from gnr650.data import SPLITS
from gnr650.files import atomic_write
from gnr650.interpret.index import ArtifactKind, artifacts_dir, read_index
from gnr650.summary import changes, header, robustness, significance, tables
from gnr650.summary.collect import Job, collect_jobs
from gnr650.summary.report import Document, FigureEntry, Links, Paragraphs, Section, TableBlock, render_html

REPORT_NAME = "report.html"
SPLIT_NAMES = {"train": "Train", "val": "Validation", "test": "Test"}
# Exported figures embedded per section, in this order (kind: caption); the rest of the exports are linked.
EMBEDDED = {
    "Learning curves": {
        ArtifactKind.LEARNING_CURVES_PLOT: "Train and validation accuracy and loss per epoch; the marked epoch is "
        "the evaluated checkpoint's",
    },
    "What changed": {
        ArtifactKind.CHANGE_PLOT: "What fine-tuning changed, start vs end weights",
        ArtifactKind.KERNEL_NORMS_PLOT: "L2 norms of the conv kernels, start vs end",
        ArtifactKind.VIT_WEIGHT_NORMS_PLOT: "Weight norms of the ViT blocks, start vs end",
        ArtifactKind.FAITHFULNESS_PLOT: "Deletion and insertion curves of the explanations",
        ArtifactKind.GRADCAM_PLOT: "Grad-CAM on test images",
        ArtifactKind.TSNE_PLOT: "t-SNE of the classifier's input features, start vs end",
    },
    "Per-class detail": {ArtifactKind.EVALUATION_PLOT: "Test confusion matrix and per-class accuracy"},
    robustness.HEADING: {ArtifactKind.RELIABILITY_PLOT: "Reliability on the clean and shifted test images"},
    "Kernels and feature maps": {
        ArtifactKind.KERNEL_GRID: "First-layer kernels",
        ArtifactKind.FEATURE_MAPS: "Feature maps of one test image",
    },
}
FIRST_LAYER_ONLY = {ArtifactKind.KERNEL_GRID}  # one grid per phase embedded; every layer's is linked
ATTENTION_KINDS = (ArtifactKind.ATTENTION_MAP, ArtifactKind.ATTENTION_ROLLOUT)  # linked in "Attention"


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` from the run's results.json and exports; returns its path."""
    root = Path(run_dir)
    jobs = [job for job in collect_jobs(root) if job.dir == root]
    if not jobs:
        raise FileNotFoundError(f"no results.json in {root}")
    job = jobs[0]
    doc = Document(header.title(jobs, []), header.header(jobs), _sections(job))
    html = render_html(doc)
    return atomic_write(root / REPORT_NAME, lambda tmp: Path(tmp).write_text(html))


def split_table(job: Job) -> tables.Table:
    """Accuracy, macro accuracy, loss and images per split; the test accuracy's 95% Wilson interval from the
    run's per-image test predictions."""
    sizes = (job.results.get("data") or {}).get("sizes") or {}
    predictions = significance.load_predictions([job])
    intervals = significance.accuracy_rows(predictions)
    rows = []
    for split in SPLITS:
        shown = tables.interval(intervals[0]["low"], intervals[0]["high"]) if split == "test" and intervals else None
        loss = job.metric(f"{split}/loss")
        rows.append(
            [
                SPLIT_NAMES.get(split, split),
                tables.percent(job.metric(f"{split}/acc")),
                tables.percent(job.metric(f"{split}/acc_macro")),
                tables.MISSING if loss is None else f"{loss:.4f}",
                f"{sizes[split]:,}" if split in sizes else tables.MISSING,
                shown or tables.MISSING,
            ]
        )
    headers = ["Split", "Accuracy", "Macro Accuracy", "Loss", "Images", "95% Wilson interval"]
    return tables.Table(headers, rows, [False] * len(rows))


def observations(job: Job) -> list[str]:
    """Measured statements: status and warnings, the train - validation and train - test gaps (overfitting), the
    evaluated checkpoint's epoch, the lookup caveat."""
    if not job.ok:
        return [f"The run {job.status}: {job.error}"]
    lines = [f"Warning: {w}" for w in job.warnings]
    train, val, test = (job.metric(f"{s}/acc") for s in SPLITS)
    if train is not None and val is not None:
        gap = f"Train − validation accuracy gap: {100 * (train - val):+.2f} points"
        gap += f", train − test {100 * (train - test):+.2f} points" if test is not None else ""
        lines.append(
            gap + " in the final evaluation (eval mode, no augmentation; the learning curves' train accuracy is the "
            "running one during each epoch, with augmentation and dropout). Large = the network fits its train set "
            "far better than unseen images: overfitting."
        )
    checkpoint = job.results.get("checkpoint")
    if checkpoint:
        lines.append(
            f"Evaluated weights: the best-on-validation checkpoint {Path(checkpoint).name} "
            f"(of {job.results.get('epochs')} epochs trained)."
        )
    if job.lookup:
        lines.append(f"This strategy's {tables.LOOKUP_NOTE}; judge it by validation and test accuracy.")
    return lines


def _sections(job: Job) -> list[Section]:
    index = read_index_safely(job.dir)
    embedded: set[str] = set()
    results = Section("Results", [TableBlock(split_table(job), id="results-table")])
    sections = [results, Section("Observations", [Paragraphs(observations(job))])]
    for heading, kinds in EMBEDDED.items():
        figures = [fig for kind, caption in kinds.items() for fig in _figures(job, index, kind, caption)]
        embedded |= {fig.name for fig in figures}
        blocks: list = list(figures)
        if heading == "What changed":
            table = changes.faithfulness_table([(0, job, a) for _, _, a in changes.load_analyses([job])])
            if table:
                blocks.append(TableBlock(table, "Faithfulness of explanations (deletion / insertion AUC)"))
        if heading == "Per-class detail":
            blocks.insert(0, TableBlock(_per_class_table(job), "Accuracy per class and split"))
        if heading == robustness.HEADING:
            blocks = [
                b
                for _, _, report in changes.load_json_artefacts([job], ArtifactKind.ROBUSTNESS_JSON)
                for b in robustness.run_blocks(report)
            ] + blocks
        if any(not isinstance(b, TableBlock) or b.table.rows for b in blocks):
            sections.append(Section(heading, blocks))
    attention = [_link(e) for e in index if e["kind"] in ATTENTION_KINDS]
    if attention:
        sections.append(Section("Attention", [Links("Attention maps and rollouts the run exported:", attention)]))
    rest = [_link(e) for e in index if _path(e) not in embedded and e["kind"] not in ATTENTION_KINDS]
    files = [("results.json", "results.json")] + [
        (n, n) for n in ("history.csv", "metrics.csv") if (job.dir / n).is_file()
    ]
    sections.append(
        Section("Files", [Links("The run's results and every other export (full resolution):", files + rest)])
    )
    return sections


def read_index_safely(run_dir: Path) -> list[dict]:
    """The run's artefact index, empty when it has none or it is unreadable (the report goes on without figures)."""
    try:
        return read_index(artifacts_dir(run_dir))
    except (OSError, ValueError):
        return []


def _path(entry: dict) -> str:
    return f"{artifacts_dir('.').name}/{entry['path']}"


def _link(entry: dict) -> tuple[str, str]:
    details = ", ".join(str(entry[k]) for k in ("layer", "phase") if entry.get(k))
    return f"{entry['path']}" + (f" ({details})" if details else ""), _path(entry)


def _figures(job: Job, index: list[dict], kind: ArtifactKind, caption: str) -> list[FigureEntry]:
    """The run's figures of ``kind`` (start before end; the first layer only where FIRST_LAYER_ONLY), embedded."""
    entries = [e for e in index if e["kind"] == kind and e["path"].endswith(".png")]
    if kind in FIRST_LAYER_ONLY:
        first = entries[0]["layer"] if entries else None
        entries = [e for e in entries if e["layer"] == first]
    found = []
    for e in entries:
        path = artifacts_dir(job.dir) / e["path"]
        if path.is_file():
            where = e.get("layer") or Path(e["path"]).stem
            epoch = f" (epoch {e['epoch']})" if e.get("epoch") is not None else ""
            found.append(FigureEntry(_path(e), f"{caption}: {where}, {e.get('phase')}{epoch}.", path.read_bytes()))
    return found


def _per_class_table(job: Job) -> tables.Table:
    per_class = job.results.get("per_class") or {}
    splits = [s for s in SPLITS if per_class.get(s)]
    classes = list(per_class[splits[0]]) if splits else []
    rows = [[c, *(tables.percent(per_class[s].get(c)) for s in splits)] for c in classes]
    return tables.Table(["Class", *(SPLIT_NAMES.get(s, s) for s in splits)], rows, [False] * len(rows))
