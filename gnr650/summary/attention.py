"""Attention comparison across ViT jobs, from the attention arrays each job exported at the end (found
through its artefact index).

Per class: one figure, a row per job and a column per layer showing the CLS token's
attention to the patches (head mean, over the image), plus a last row with each job's
attention rollout, so "last-layer fine-tuning looks like no fine-tuning, early layers
look sharper" can be checked by eye. The entropy figure puts a number on "sharper".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from gnr650.interpret.figures import ATTENTION_CMAP, draw_patch_grid
from gnr650.interpret.index import PHASE_END, ArtifactKind, artifacts_dir, find_artifacts
from gnr650.summary.collect import Job
from gnr650.summary.figures import job_legend, job_style, titled

log = logging.getLogger(__name__)


@dataclass
class JobAttention:
    """One job's exported attention, reduced to CLS-to-patch maps on the patch grid."""

    job: Job
    index: int  # the job's position in the multirun, for its colour
    heads: np.ndarray  # [n_images, n_layers, n_heads, grid_h, grid_w], per head
    maps: np.ndarray  # [n_images, n_layers, grid_h, grid_w], head mean
    entropy: np.ndarray  # [n_images, n_layers] nats, mean over heads (as analysis.json's attention_entropy)
    rollout: np.ndarray  # [n_images, grid_h, grid_w]
    labels: np.ndarray  # [n_images]
    predictions: np.ndarray | None  # [n_images] the model's class per image; None in files written before it
    class_names: list[str]
    images: np.ndarray  # [n_images, 3, H, W] uint8
    layer_names: list[str]


def load_attention(jobs: list[Job]) -> list[JobAttention]:
    """The jobs that exported attention at the end (the best weights); an unreadable file is skipped with a warning."""
    attentions = []
    for index, job in enumerate(jobs):
        paths = find_artifacts(artifacts_dir(job.dir), ArtifactKind.ATTENTION_NPZ, phase=PHASE_END)
        if not paths:
            continue
        path = paths[-1]
        try:
            with np.load(path, allow_pickle=False) as z:
                cls = z["cls_attention"].astype(np.float32)
                prefix = int(z["num_prefix_tokens"])
                grid_h, grid_w = (int(g) for g in z["grid"])
                heads = cls[..., prefix:].reshape(*cls.shape[:3], grid_h, grid_w)
                p = cls[..., prefix:] / np.clip(cls[..., prefix:].sum(axis=-1, keepdims=True), 1e-12, None)
                entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1).mean(axis=2)
                attentions.append(
                    JobAttention(
                        job=job,
                        index=index,
                        heads=heads,
                        maps=heads.mean(axis=2),
                        entropy=entropy,
                        rollout=z["rollout"].astype(np.float32),
                        labels=z["labels"],
                        predictions=z["predictions"] if "predictions" in z.files else None,
                        class_names=[str(c) for c in z["class_names"]],
                        images=z["images"],
                        layer_names=[str(n).removesuffix(".attn") for n in z["layer_names"]],
                    )
                )
        except (OSError, KeyError, ValueError) as exc:
            log.warning("Skipping unreadable %s: %s", path, exc)
    return attentions


def class_names(attentions: list[JobAttention]) -> list[str]:
    """Classes with at least one exported image, in the first job's class order."""
    names: list[str] = []
    for e in attentions:
        names += [e.class_names[i] for i in sorted(set(e.labels.tolist())) if e.class_names[i] not in names]
    return names


def file_name(class_name: str) -> str:
    return "attention_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name) + ".png"


def _pick_image(attentions: list[JobAttention], class_name: str) -> list[int | None]:
    """Per job, the index of the same image of the class (first one found), else any of the class."""
    reference = None
    picks: list[int | None] = []
    for e in attentions:
        of_class = [i for i, lab in enumerate(e.labels) if e.class_names[lab] == class_name]
        if reference is None and of_class:
            reference = e.images[of_class[0]]
        same = [i for i in of_class if np.array_equal(e.images[i], reference)]
        picks.append((same or of_class or [None])[0])
    return picks


def _show(ax, image: np.ndarray, heat: np.ndarray | None = None) -> None:
    """The image, dimmed under a per-map min-max normalised heat map drawn cell by cell (nearest) on the patch
    grid, with the patch borders drawn."""
    rgb = np.transpose(image, (1, 2, 0))
    height, width = rgb.shape[:2]
    ax.imshow(rgb if heat is None else rgb.mean(axis=2), cmap="gray", extent=(0, width, height, 0))
    if heat is not None:
        span = float(heat.max() - heat.min()) or 1.0
        ax.imshow(
            (heat - heat.min()) / span,
            cmap=ATTENTION_CMAP,
            alpha=0.6,
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(0, width, height, 0),
        )
        draw_patch_grid(ax, heat.shape, width, height)
    ax.set_xticks([])
    ax.set_yticks([])


def _verdict(e: JobAttention, pick: int) -> tuple[str, str] | None:
    """('right: <class>' | 'wrong: <class>', colour) for the job's prediction of the image; None when the
    job's file has no predictions."""
    if e.predictions is None:
        return None
    predicted = e.class_names[int(e.predictions[pick])]
    if e.predictions[pick] == e.labels[pick]:
        return f"right: {predicted}", "tab:green"
    return f"wrong: {predicted}", "tab:red"


def class_figure(attentions: list[JobAttention], class_name: str) -> Figure:
    """Rows: jobs (then one rollout row); columns: the image (with the job's prediction, where exported), then
    one per layer; one colour bar for all maps (each is min-max scaled on its own)."""
    picks = _pick_image(attentions, class_name)
    n_layers = max(e.maps.shape[1] for e in attentions)
    n_cols = 1 + max(n_layers, len(attentions))
    n_rows = len(attentions) + 1
    fig = Figure(figsize=(max(8.0, 1.35 * n_cols + 2.0), 1.55 * n_rows + 1.0), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row, (e, pick) in enumerate(zip(attentions, picks)):
        axes[row, 0].set_axis_on()
        axes[row, 0].set_ylabel(e.job.label.replace(", ", "\n"), fontsize=8)
        if pick is None:
            axes[row, 0].text(0.5, 0.5, "no image\nof this class", ha="center", va="center", fontsize=7)
            axes[row, 0].set_xticks([])
            axes[row, 0].set_yticks([])
            continue
        _show(axes[row, 0], e.images[pick])
        if verdict := _verdict(e, pick):
            axes[row, 0].set_xlabel(verdict[0], fontsize=7, color=verdict[1], labelpad=1)
        for layer in range(e.maps.shape[1]):
            ax = axes[row, layer + 1]
            ax.set_axis_on()
            _show(ax, e.images[pick], e.maps[pick, layer])
            if row == 0:
                ax.set_title(e.layer_names[layer], fontsize=8)
        if row == 0:
            axes[row, 0].set_title("image", fontsize=8)
    rollout_row = axes[-1]
    rollout_row[0].set_axis_on()
    _show(rollout_row[0], next(e.images[pick] for e, pick in zip(attentions, picks) if pick is not None))
    rollout_row[0].set_ylabel("attention\nrollout", fontsize=8)
    for col, (e, pick) in enumerate(zip(attentions, picks), start=1):
        if pick is None:
            continue
        rollout_row[col].set_axis_on()
        _show(rollout_row[col], e.images[pick], e.rollout[pick])
        rollout_row[col].set_title(e.job.label.replace(", ", "\n"), fontsize=7)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), ATTENTION_CMAP),
        ax=axes,
        shrink=min(0.5, 4 / n_rows),
        label="attention, min–max scaled per map",
    )
    fig.suptitle(
        f"Class {class_name}\nCLS-to-patch attention (head mean) per layer, one row per job; "
        "last row: attention rollout",
        fontsize=10,
    )
    return fig


def entropy_figure(attentions: list[JobAttention]) -> Figure | None:
    """Entropy (nats) of the CLS-to-patch attention per layer, mean over heads and exported images, the same
    quantity as analysis.json's ``attention_entropy``: lower is sharper; ln(patches) is uniform attention."""
    if not attentions:
        return None
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.add_subplot()
    series, legend = {}, {}
    for e in attentions:
        series[e.job.label] = e.entropy.mean(axis=0)
        (legend[e.job.label],) = ax.plot(e.layer_names, series[e.job.label], **job_style(e.index).line())
    for n_patches in sorted({int(np.prod(e.maps.shape[2:])) for e in attentions}):
        ax.axhline(np.log(n_patches), color="0.4", lw=0.8, ls=":")
        ax.annotate(
            f"uniform over {n_patches} patches: ln {n_patches} = {np.log(n_patches):.2f} nats",
            (0, np.log(n_patches)),
            xycoords=("axes fraction", "data"),
            xytext=(4, -10),
            textcoords="offset points",
            fontsize=7,
            color="0.3",
        )
    titled(ax, "Sharpness of the CLS token's attention per layer (lower entropy = sharper)", series)
    ax.set(xlabel="Layer (module name)", ylabel="Entropy of CLS-to-patch attention (nats)")
    ax.tick_params(axis="x", labelsize=8, rotation=45)
    ax.grid(alpha=0.3)
    job_legend(fig, legend)
    return fig
