"""Predict classes for image files with a trained run: batches decoded as training decoded them, the run's
preprocessing, top-k classes per image, optional attention-rollout overlays for ViTs; unreadable files are rows
with an error, not a failure."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gnr650.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_image_file, resize_image
from gnr650.errors import UserError
from gnr650.files import atomic_write
from gnr650.inference.overlay import attention_overlay_figure
from gnr650.inference.trained_run import TrainedRun
from gnr650.interpret.attention import attention_layers, attention_rollout, extract_attention, patch_grid
from gnr650.interpret.figures import save_figure

log = logging.getLogger(__name__)


class PredictInputError(ValueError, UserError):
    """The images or options given to predict cannot be used; the message says which and what to do."""


@dataclass
class Prediction:
    """One image: the top-k classes and probabilities (best first), or the error that made it unreadable."""

    file: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    attention: str | None = None
    error: str | None = None


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (also non-image names, so that they are reported), folders searched recursively for
    image files, each in sorted order. A missing path or no image at all is an error before any work."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise PredictInputError(f"These inputs do not exist: {missing}. Give image files or folders of images.")
    files: list[Path] = []
    for p in map(Path, inputs):
        files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)) if p.is_dir() else [p]
    if not files:
        raise PredictInputError(
            f"No image files in {[str(p) for p in inputs]} (folders are searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    return files


def check_channels(run: TrainedRun, images: torch.Tensor) -> None:
    """A batch must have the channels the network was trained on (decode_image makes every file RGB)."""
    if images.ndim != 4 or images.shape[1] != run.in_channels:
        raise PredictInputError(
            f"Images of shape {tuple(images.shape)} do not fit the run's network, which takes "
            f"[N, {run.in_channels}, H, W] uint8 images. Decode files with gnr650.data.images.decode_image, which "
            "converts greyscale, palette and RGBA images to RGB as training did."
        )


@torch.no_grad()
def predict_images(run: TrainedRun, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, classes] for a uint8 batch [N, C, H, W] on the run's device."""
    check_channels(run, images)
    return run.net(run.preprocess(images)).float().softmax(dim=-1)


def _decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    array = decode_image(path)
    return array if array.shape[:2] == tuple(size) else resize_image(array, size)


def _batches(files: Sequence[Path], batch_size: int) -> Iterable[Sequence[Path]]:
    for start in range(0, len(files), batch_size):
        yield files[start : start + batch_size]


def predict_files(
    run: TrainedRun,
    files: Sequence[Path],
    topk: int = 5,
    batch_size: int = 64,
    attention_dir: Path | None = None,
) -> list[Prediction]:
    """One ``Prediction`` per file, in order. ``attention_dir``: also an attention-rollout overlay per image."""
    if topk < 1:
        raise PredictInputError(f"topk must be at least 1 (got {topk}).")
    if attention_dir is not None and not attention_layers(run.net):
        raise PredictInputError(
            f"Attention overlays need a ViT; this run's network is {run.built.name} (no attention layers). "
            "Leave out --attention."
        )
    device = next(run.net.parameters()).device
    k = min(topk, len(run.class_names))
    number = {str(f): i for i, f in enumerate(files)}
    predictions: list[Prediction] = []
    for batch in _batches(files, batch_size):
        arrays, readable = [], []
        for path in batch:
            try:
                arrays.append(_decode(path, run.data_size))
                readable.append(Prediction(str(path)))
            except ImageDecodeError as e:
                predictions.append(Prediction(str(path), error=str(e)))
        if not arrays:
            continue
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
        probs, index = predict_images(run, images).topk(k, dim=-1)
        for p, values, classes in zip(readable, probs.tolist(), index.tolist()):
            p.classes, p.probabilities = [run.class_names[c] for c in classes], values
        if attention_dir is not None:
            _attention_overlays(run, images, readable, number, attention_dir)
        predictions += readable
    return sorted(predictions, key=lambda p: number[p.file])


def _attention_overlays(
    run: TrainedRun, images: torch.Tensor, predictions: list[Prediction], number: dict[str, int], out: Path
) -> None:
    """``<out>/<NNNNN>_<file stem>.png``, numbered by input position (stems may repeat across folders)."""
    attn, _ = extract_attention(run.net, run.preprocess(images))
    rollout = attention_rollout(attn, int(run.net.num_prefix_tokens), patch_grid(run.net))
    for image, amap, p in zip(images.cpu(), rollout, predictions):
        caption = f"{p.classes[0]} ({p.probabilities[0]:.1%})"
        figure = attention_overlay_figure(image, amap, caption, Path(p.file).name)
        p.attention = str(save_figure(figure, out / f"{number[p.file]:05d}_{Path(p.file).stem}.png"))


def write_predictions(path: Path, predictions: Sequence[Prediction], topk: int) -> Path:
    """CSV, one row per image: file, class, probability, the top-k classes and probabilities (';'-separated,
    best first), the attention overlay when made, and the error for an unreadable file (other fields empty)."""
    header = ["file", "class", "probability", f"top{topk}_classes", f"top{topk}_probabilities", "attention", "error"]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for p in predictions:
                top = bool(p.classes)
                writer.writerow(
                    [
                        p.file,
                        p.classes[0] if top else "",
                        f"{p.probabilities[0]:.6f}" if top else "",
                        ";".join(p.classes),
                        ";".join(f"{v:.6f}" for v in p.probabilities),
                        p.attention or "",
                        p.error or "",
                    ]
                )

    return atomic_write(path, write)
