"""Fake multirun jobs for the summary tests: results.json, metrics.csv and attention arrays as jobs write them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

from gnr650.interpret.index import ArtifactKind, append_to_index, artifacts_dir, entry

CLASSES = ["AnnualCrop", "Forest"]
REPO = Path(__file__).resolve().parents[2]


def attention_arrays(sharpness: float, n_layers: int = 3, grid: int = 4, seed: int = 0) -> dict:
    """An attention.npz payload; attention gets more diffuse with depth, scaled by `sharpness`."""
    rng = np.random.default_rng(seed)
    n_images, heads, prefix = len(CLASSES), 2, 1
    logits = rng.normal(size=(n_images, n_layers, heads, prefix + grid * grid))
    depth = np.linspace(sharpness, 0.2, n_layers)[None, :, None, None]
    cls = np.exp(logits * depth * 3)
    cls /= cls.sum(axis=-1, keepdims=True)
    return {
        "cls_attention": cls.astype(np.float32),
        "rollout": cls[:, -1, :, prefix:].mean(axis=1).reshape(n_images, grid, grid).astype(np.float32),
        "grid": np.array([grid, grid]),
        "num_prefix_tokens": np.array(prefix),
        "labels": np.arange(n_images, dtype=np.int64),
        "class_names": np.array(CLASSES),
        "images": np.random.default_rng(42).integers(0, 255, size=(n_images, 3, 32, 32), dtype=np.uint8),
        "layer_names": np.array([f"blocks.{i}" for i in range(n_layers)]),
    }


def make_job(
    root: Path,
    num: int,
    overrides: list[str],
    *,
    acc: tuple[float, float, float] = (0.9, 0.8, 0.7),
    status: str | None = "completed",
    error: str | None = None,
    warnings: list[str] | None = None,
    epochs: int = 3,
    attention: float | None = None,
    kernel_norms: bool = False,
    attention_path: str = "attention.npz",
    kernel_norms_path: str = "kernel_norm_stats.csv",
    index: bool = True,
) -> Path:
    """A fake Hydra job directory; `status=None` leaves no results.json (a killed job); `warnings` as a run that
    did not learn writes them.

    Artefacts are written at the given paths under artifacts/ and listed in its index as the export callbacks
    do (`index=False`: no index, as in runs older than it).
    """
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if epochs:
        with (job / "metrics.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "step", "train/acc", "train/loss_epoch", "train/loss_step", "val/acc", "val/loss"])
            for e in range(epochs):  # the row layout of Lightning's CSVLogger
                w.writerow([e, 10 * e + 4, "", "", 3.0, "", ""])
                w.writerow([e, 10 * e + 9, "", "", 2.0, "", ""])
                w.writerow([e, 10 * e + 9, "", "", "", acc[1] * (e + 1) / epochs, 0.5])
                w.writerow([e, 10 * e + 9, acc[0], 1.0 / (e + 1), "", "", ""])
    artifacts, entries = artifacts_dir(job), []
    if attention is not None:
        (artifacts / attention_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(artifacts / attention_path, **attention_arrays(attention))
        entries.append(entry(ArtifactKind.ATTENTION_NPZ, attention_path, phase="end", epoch=epochs))
    if kernel_norms:
        (artifacts / kernel_norms_path).parent.mkdir(parents=True, exist_ok=True)
        entries.append(entry(ArtifactKind.KERNEL_NORM_STATS_CSV, kernel_norms_path, phase="end", epoch=epochs))
        with (artifacts / kernel_norms_path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["phase", "layer", "mean", "std", "min", "max"])
            for phase, scale in (("start", 1.0), ("end", 1.0 + num / 10)):
                for i, layer in enumerate(["conv1", "layer1.0.conv1", "layer1.0.conv2"]):
                    w.writerow([phase, layer, scale * (i + 1), 0.1, 0.5, 2 * scale * (i + 1)])
    if entries and index:
        append_to_index(artifacts, entries)
    if status is not None:
        results = {
            "status": status,
            "error": error,
            "warnings": warnings or [],
            "overrides": overrides,
            "metrics": {"train/acc": acc[0], "val/acc": acc[1], "test/acc": acc[2]} if status == "completed" else {},
            "params": {"total": 5_000_000, "trainable": 2_000 * (num + 1)},
            "timing": {"fit_s": 10.0 + num, "total_s": 12.0 + num},
            "run_dir": str(job),
        }
        (job / "results.json").write_text(json.dumps(results))
    return job
