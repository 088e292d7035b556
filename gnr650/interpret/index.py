"""The run's artefact index: ``artifacts/index.json``, a list of ``{kind, path, layer, epoch, phase}``.

The one place that says what each exported file is: the export callbacks list every file they write
with an ``ArtifactKind``, and readers (the sweep summary) find files by kind and phase through
``find_artifacts``, never by rebuilding file names. Several callbacks share one index, so every write
is a read-modify-write of the whole list, written atomically (temp file + ``os.replace``) so that a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path

from gnr650.files import write_json

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
INDEX_NAME = "index.json"
# Export phases (the ``phase`` field): fit start, every N epochs ``epoch<N>``, the final evaluation (best weights).
PHASE_START, PHASE_END = "start", "end"


class ArtifactKind(StrEnum):
    """What an indexed file is (the ``kind`` field)."""

    KERNEL_NORMS_CSV = "kernel_norms_csv"  # every 2-D conv kernel's L2 norm, long format (kernels.py)
    KERNEL_NORM_STATS_CSV = "kernel_norm_stats_csv"  # their mean/std/min/max per layer and phase
    KERNEL_NORMS_PLOT = "kernel_norms_plot"
    VIT_WEIGHT_NORMS_CSV = "vit_weight_norms_csv"  # per layer and phase: mean/std/min/max of its row norms
    VIT_WEIGHT_NORMS_PLOT = "vit_weight_norms_plot"
    KERNEL_GRID = "kernel_grid"
    KERNEL_DIFF_GRID = "kernel_diff_grid"  # end - start of the kernels a KERNEL_GRID shows, on its own scale
    FEATURE_MAPS = "feature_maps"
    ATTENTION_MAP = "attention_map"
    ATTENTION_ROLLOUT = "attention_rollout"
    ATTENTION_NPZ = "attention_npz"
    # What fine-tuning changed (gnr650/interpret/change.py) and the final evaluation's per-image predictions.
    ANALYSIS_JSON = "analysis_json"
    WEIGHT_DRIFT_CSV = "weight_drift_csv"
    REPRESENTATION_CSV = "representation_csv"
    ATTENTION_STATS_CSV = "attention_stats_csv"
    CHANGE_PLOT = "change_plot"  # per-layer figures: drift per module; drift per block, CKA, probes, attention
    FAITHFULNESS_PLOT = "faithfulness_plot"
    GRADCAM_PLOT = "gradcam"
    EVALUATION_PLOT = "test_evaluation_plot"  # confusion matrix and per-class accuracy
    TSNE_PLOT = "tsne_plot"
    TEST_PREDICTIONS = "test_predictions"
    LEARNING_CURVES_PLOT = "learning_curves_plot"  # train and val accuracy and loss per epoch (learning_curves.py)
    # Does it hold up (gnr650/robustness/callback.py): accuracy and calibration under shifts, WiSE curve.
    ROBUSTNESS_JSON = "robustness_json"
    ROBUSTNESS_CSV = "robustness_csv"  # one row per (shift, level)
    RELIABILITY_PLOT = "reliability_plot"  # reliability diagram, clean test data, before and after temperature


def artifacts_dir(run_dir: str | Path) -> Path:
    """Where a run's exports and their index live."""
    return Path(run_dir) / ARTIFACTS_DIR


def read_index(artifacts_dir: str | Path) -> list[dict]:
    """The entries recorded so far (empty when there is no index yet)."""
    path = Path(artifacts_dir) / INDEX_NAME
    if not path.exists():
        return []
    return json.loads(path.read_text())


def entry(
    kind: ArtifactKind, path: str | Path, *, phase: str, layer: str | None = None, epoch: int | None = None
) -> dict:
    """One index entry; ``path`` is relative to the artifacts directory, ``phase`` is the export that wrote
    the file (``start``, ``epoch<N>``, ``end``; a file rewritten by each phase carries the latest)."""
    path = Path(path)
    if path.is_absolute():
        raise ValueError(f"index paths are relative to artifacts/, got {path}")
    return {"kind": ArtifactKind(kind).value, "path": path.as_posix(), "layer": layer, "epoch": epoch, "phase": phase}


def append_to_index(artifacts_dir: str | Path, entries: list[dict]) -> Path:
    """Add ``entries``; an entry for a path already listed replaces the old one (the file was rewritten)."""
    new_paths = {e["path"] for e in entries}
    merged = [e for e in read_index(artifacts_dir) if e["path"] not in new_paths] + list(entries)
    return write_json(Path(artifacts_dir) / INDEX_NAME, merged)


def find_artifacts(artifacts_dir: str | Path, kind: ArtifactKind, phase: str | None = None) -> list[Path]:
    """The files of ``kind`` (and ``phase`` when given) listed in the index, in the order they were written.

    A run without an index (older runs) or with an unreadable one has none: logged, not raised, so
    that a reader such as the sweep summary simply leaves out what it cannot find.
    """
    artifacts_dir = Path(artifacts_dir)
    if not (artifacts_dir / INDEX_NAME).is_file():
        log.debug("No %s in %s: no %s artefacts", INDEX_NAME, artifacts_dir, kind)
        return []
    try:
        entries = read_index(artifacts_dir)
        return [
            artifacts_dir / e["path"]
            for e in entries
            if e.get("kind") == kind and (phase is None or e.get("phase") == phase)
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("Unreadable %s in %s (%s): no %s artefacts", INDEX_NAME, artifacts_dir, exc, kind)
        return []
