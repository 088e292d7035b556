"""Fake multirun jobs for the summary tests: results.json, metrics.csv and attention arrays as jobs write them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

from gnr650.interpret.index import ArtifactKind, append_to_index, artifacts_dir, entry
from gnr650.robustness.shifts import SHIFTS as SUITE
from tests.helpers import EUROSAT_CLASSES

CLASSES = ["AnnualCrop", "Forest"]
REPO = Path(__file__).resolve().parents[2]


def attention_arrays(
    sharpness: float,
    n_layers: int = 3,
    grid: int = 4,
    seed: int = 0,
    heads: int = 2,
    classes: list[str] = CLASSES,
    image_size: int = 32,
    predictions: bool = True,
) -> dict:
    """An attention.npz payload, one image per class; attention gets more diffuse with depth, scaled by `sharpness`.
    Predictions are right for about two thirds of the images (`predictions=False`: a file from before they were
    saved)."""
    rng = np.random.default_rng(seed)
    n_images, prefix = len(classes), 1
    logits = rng.normal(size=(n_images, n_layers, heads, prefix + grid * grid))
    depth = np.linspace(sharpness, 0.2, n_layers)[None, :, None, None]
    cls = np.exp(logits * depth * 3)
    cls /= cls.sum(axis=-1, keepdims=True)
    labels = np.arange(n_images, dtype=np.int64)
    wrong = rng.random(n_images) < 1 / 3
    arrays = {
        "cls_attention": cls.astype(np.float32),
        "rollout": cls[:, -1, :, prefix:].mean(axis=1).reshape(n_images, grid, grid).astype(np.float32),
        "grid": np.array([grid, grid]),
        "num_prefix_tokens": np.array(prefix),
        "labels": labels,
        "predictions": np.where(wrong, (labels + 1) % n_images, labels),
        "class_names": np.array(classes),
        "images": np.random.default_rng(42).integers(
            0, 255, size=(n_images, 3, image_size, image_size), dtype=np.uint8
        ),
        "layer_names": np.array([f"blocks.{i}" for i in range(n_layers)]),
    }
    if not predictions:
        del arrays["predictions"]
    return arrays


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
    attention_shape: dict | None = None,
    kernel_norms: bool = False,
    attention_path: str = "attention.npz",
    kernel_norms_path: str = "kernel_norm_stats.csv",
    index: bool = True,
) -> Path:
    """A fake Hydra job directory; `status=None` leaves no results.json (a killed job); `warnings` as a run that
    did not learn writes them; `attention_shape`: `attention_arrays`' keyword arguments.

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
        np.savez(artifacts / attention_path, **attention_arrays(attention, **(attention_shape or {})))
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


EUROSAT = EUROSAT_CLASSES


def realistic_sweep(root: Path, strategies: list[str], test_images: int = 540, attention: bool = True) -> Path:
    """A ViT strategy sweep with everything a real job leaves (results.json with config, provenance and per-class
    accuracies; curves; attention for 10 classes over 12 layers; analysis.json; test predictions; the evaluation
    figure), for the report's size and browser checks; ``attention=False``: no attention export (drawing its
    grids is most of a summary's time)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    labels = np.arange(test_images) % len(EUROSAT)
    blocks = [f"blocks.{i}" for i in range(12)]
    for num, strategy in enumerate(strategies):
        right = rng.random(test_images) < 0.6 + 0.03 * num
        predicted = np.where(right, labels, (labels + 1) % len(EUROSAT))
        acc = float(right.mean())
        job = make_job(root, num, ["experiment=eurosat-vit", f"finetune={strategy}"], acc=(0.99, acc + 0.01, acc))
        artifacts = artifacts_dir(job)
        (artifacts / "change").mkdir(parents=True)
        if attention:
            np.savez(
                artifacts / "attention.npz",
                **attention_arrays(
                    1.0 + num / 4, n_layers=12, grid=14, seed=num, heads=3, classes=EUROSAT, image_size=224
                ),
            )
        np.savez(artifacts / "test_predictions.npz", labels=labels, predicted=predicted)
        analysis = {
            "epochs": {"start": 0, "end": 3},
            "blocks": blocks,
            "weight_drift": {b: 0.01 * num * (i + 1) for i, b in enumerate(blocks)},
            "cka": {b: 1 - 0.02 * num * i for i, b in enumerate(blocks)},
            "layer_probe": {b: {"start": 0.5, "end": 0.5 + 0.03 * i} for i, b in enumerate(blocks)},
            "attention_distance": {b: {"start": [40.0] * 3, "end": [20.0 + 5 * i] * 3} for i, b in enumerate(blocks)},
            "attention_entropy": {b: {"start": 3.0, "end": 2.0 + 0.1 * i} for i, b in enumerate(blocks)},
            "faithfulness": {
                method: {"deletion_auc": 0.3 + 0.01 * num, "insertion_auc": 0.6, "images": 16}
                for method in ("rollout", "gradcam", "random")
            },
        }
        (artifacts / "analysis.json").write_text(json.dumps(analysis))
        fig = Figure(figsize=(12, 5))
        left, right_ax = fig.subplots(1, 2)
        left.imshow(rng.random((10, 10)))
        right_ax.barh(EUROSAT, rng.random(10))
        fig.savefig(artifacts / "change" / "test_evaluation.png", dpi=100)
        append_to_index(
            artifacts,
            [entry(ArtifactKind.ATTENTION_NPZ, "attention.npz", phase="end", epoch=3)] * attention
            + [
                entry(ArtifactKind.TEST_PREDICTIONS, "test_predictions.npz", phase="end", epoch=3),
                entry(ArtifactKind.ANALYSIS_JSON, "analysis.json", phase="end", epoch=3),
                entry(ArtifactKind.EVALUATION_PLOT, "change/test_evaluation.png", phase="end", epoch=3),
            ],
        )
        results = json.loads((job / "results.json").read_text())
        results |= {
            "dataset": "EuroSAT",
            "model": "vit_b16",
            "finetune": strategy,
            "seed": 0,
            "epochs": 0 if strategy in ("frozen", "knn") else 3,
            "data": {"sizes": {"train": 1620, "val": 540, "test": test_images}, "classes": EUROSAT},
            "preprocess": {"input_size": [64, 64]},
            "per_class": {"test": {c: float(right[labels == i].mean()) for i, c in enumerate(EUROSAT)}},
            "versions": {"torch": "2.5.1", "timm": "1.0.11", "pytorch_lightning": "2.4.0", "gnr650": "0.1.0"},
            "precision": {"used": "bf16-mixed", "why": "auto: this CPU has AMX bf16 matrix units"},
            "provenance": {
                "commit": "0123456789abcdef",
                "dirty": True,
                "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "platform": "Linux"},
            },
            "config": {
                "task_name": "eurosat-vit",
                "trainer": {"max_epochs": 3},
                "optimizer": {"lr_head": 1e-3, "lr_backbone": 1e-4},
                "model": {"pretrained": True},
                "dataset": {"fraction": 0.1},
                "finetune": {"name": strategy, "knn": {"k": 20} if strategy == "knn" else None},
            },
        }
        (job / "results.json").write_text(json.dumps(results))
    return root


# The shift suite as robustness.json reports it: (group, shift, levels), in the suite's order.
SHIFTS = tuple((shift.group, shift.name, shift.levels) for shift in SUITE.values())


def shift_error(shift: int, level: int) -> float:
    """The fixtures' error pattern: rising with the level, different per shift (index in SHIFTS)."""
    return 0.04 + 0.03 * level + 0.01 * (shift % 7)


def robustness_report(
    clean: float,
    scale: float = 1.0,
    *,
    shifted: float | None = None,
    baseline: str | None = "finetune=last",
    skipped: tuple[str, ...] = (),
    wise: bool = True,
) -> dict:
    """A robustness.json as gnr650/robustness writes it: every shift of SHIFTS at every level with error
    ``scale * shift_error`` (``shifted``: every row at that accuracy instead), the ``skipped`` shifts left out and
    listed, the means derived from the rows (None without rows, as when every shift was skipped)."""

    def calibration(error: float, scaled: bool = False) -> dict:
        return {"ece": (0.5 if scaled else 1.0) * (0.02 + 0.2 * error), "nll": 0.3 + 2 * error, "brier": 0.1 + error}

    rows = []
    for k, (group, name, levels) in enumerate(SHIFTS):
        for level in range(1, levels + 1):
            if name not in skipped:
                acc = shifted if shifted is not None else 1 - scale * shift_error(k, level)
                rows.append({"shift": name, "group": group, "level": level, "acc": acc} | calibration(1 - acc))
    corruption = [r["acc"] for r in rows if r["group"] == "corruption"]
    mean_corruption = float(np.mean(corruption)) if corruption else None
    pooled = {k: float(np.mean([r[k] for r in rows])) for k in ("acc", "ece", "nll", "brier")} if rows else None
    return {
        "split": "test",
        "images": 1000,
        "native_size": [64, 64],
        "weights_epoch": 3,
        "seconds": 41.2,
        "baseline": baseline,
        "clean": {"acc": clean} | calibration(1 - clean),
        "temperature": 1.27,
        "clean_scaled": {"acc": clean} | calibration(1 - clean, scaled=True),
        "shifts": rows,
        "skipped": [{"shift": name, "reason": f"{name} needs images of at least 128 px"} for name in skipped],
        "mean_corruption_acc": mean_corruption,
        "relative_robustness": mean_corruption / clean if corruption else None,
        "shifted_acc": pooled["acc"] if rows else None,
        "shifted": pooled,
        "shifted_scaled": {k: 0.5 * v for k, v in pooled.items()} if rows else None,
        "wise": [
            {
                "alpha": a,
                "clean_acc": 0.8 + (clean - 0.8) * a,
                "shifted_acc": 0.6 + 0.1 * scale * a * (2 - a) if rows else None,
            }
            for a in (0.0, 0.25, 0.5, 0.75, 1.0)
        ]
        if wise
        else [],
        "wise_shifts": "each shift at its middle level",
    }


def add_robustness(job: Path, report: dict, path: str = "robustness/eval.json", reliability: bool = True) -> Path:
    """Write ``report`` where ``path`` says under the job's artifacts/ and index it as the robustness callback
    does (with a reliability diagram unless ``reliability=False``)."""
    artifacts = artifacts_dir(job)
    (artifacts / path).parent.mkdir(parents=True, exist_ok=True)
    (artifacts / path).write_text(json.dumps(report))
    entries = [entry(ArtifactKind.ROBUSTNESS_JSON, path, phase="end", epoch=report["weights_epoch"])]
    if reliability:
        from PIL import Image

        plot = Path(path).parent / "reliability.png"
        Image.new("RGB", (40, 30), "white").save(artifacts / plot)
        entries.append(entry(ArtifactKind.RELIABILITY_PLOT, plot, phase="end"))
    append_to_index(artifacts, entries)
    return artifacts / path
