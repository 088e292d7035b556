"""The attention explorer of report.html: one interactive view instead of a static grid per class.

The reader picks a class (image), a layer or the rollout, one job or all jobs side by side, and the head mean or one
head, and sees the image, the map over it (one square per patch, nearest-neighbour, the patch grid drawn), a colour
bar with its range and whether each job classified that image right. The page stays small because each image is
embedded once (JPEG) and the maps as numbers: per map, uint8 codes between its min and max (error at most
(max - min) / 510), deflated and base64-encoded; the browser inflates them (``DecompressionStream``) and draws on
<canvas>. Per-head maps are kept for as many layers as ``MAX_CODES`` allows (all of them for ViT-Ti at 224 px,
12 jobs); the head mean and the rollout always for every layer. No network: it opens from file://.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zlib
from importlib.resources import files

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from PIL import Image

from gnr650.summary.attention import JobAttention, class_names
from gnr650.summary.figures import job_style

COLOURMAP = "inferno"  # as the static attention figures
MAX_CODES = 1_000_000  # map values (one byte each) in the whole explorer, all jobs: ~1 MB of page after deflate+base64
MAX_CODES_PER_JOB = 150_000  # so that a 4-job sweep stays near 0.6 MB of maps
IMAGE_MAX_SIZE = 256  # larger images are shrunk for the page (the maps are coarser than that anyway)
JPEG_QUALITY = 90
LEVELS = 255  # uint8 codes 0..255 between each map's min and max


def explorer_section(attentions: list[JobAttention], max_codes: int | None = None) -> str | None:
    """A self-contained ``<section id="attention-explorer">`` (data, style and script inline), or None without
    attention. ``max_codes``: the budget of stored map values (default: ``MAX_CODES_PER_JOB`` per job, at most
    ``MAX_CODES``); per-head maps are dropped from layers, evenly, until the maps fit."""
    if not attentions:
        return None
    if max_codes is None:
        max_codes = min(MAX_CODES, MAX_CODES_PER_JOB * len(attentions))
    data = json.dumps(_payload(attentions, max_codes), separators=(",", ":")).replace("</", "<\\/")
    asset = files("gnr650.summary")
    return (
        '<section id="attention-explorer" class="attention-explorer">\n'
        "<h3>Attention explorer</h3>\n"
        '<p class="ae-help">The CLS token\'s attention to each image patch at the end of training (the evaluated '
        "weights): choose a class, a layer or the rollout (all layers combined), one job or all side by side, and "
        "the mean over heads or one head. Each square is one patch; in the side-by-side view all maps share one "
        "colour scale. Full-resolution figures per job are in each job's <code>artifacts/attention/</code>.</p>\n"
        '<div class="ae-controls"></div>\n<p class="ae-note"></p>\n<div class="ae-view"></div>\n'
        "<noscript>The explorer needs JavaScript; each job's attention figures are in its "
        "<code>artifacts/attention/</code> folder.</noscript>\n"
        f"<style>{asset.joinpath('explorer.css').read_text()}</style>\n"
        f'<script type="application/json" class="ae-data">{data}</script>\n'
        f"<script>{asset.joinpath('explorer.js').read_text()}</script>\n"
        "</section>\n"
    )


def _payload(attentions: list[JobAttention], max_codes: int) -> dict:
    """What the script reads: the images (each once), the colour map and, per job, its quantised maps."""
    images, keys = _images(attentions)
    per_head = _per_head_layers(attentions, max_codes)
    lut = colormaps[COLOURMAP].resampled(256)(np.arange(256))[:, :3]
    return {
        "colourmap": "".join(f"{r:02x}{g:02x}{b:02x}" for r, g, b in np.round(lut * 255).astype(int)),
        "levels": LEVELS,
        "images": images,
        "jobs": [_job(e, keys, per_head) for e in attentions],
    }


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def _images(attentions: list[JobAttention]) -> tuple[list[dict], list[str]]:
    """Every distinct exported image once, ordered by class, with its class name; and their keys in that order."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    for e in attentions:
        for image, label in zip(e.images, e.labels):
            found.setdefault(_key(image), (e.class_names[int(label)], image))
    order = class_names(attentions)
    keys = sorted(found, key=lambda k: order.index(found[k][0]))  # stable: export order within a class
    return [{"class": found[k][0], "src": _jpeg_uri(found[k][1])} for k in keys], keys


def _jpeg_uri(image: np.ndarray) -> str:
    picture = Image.fromarray(np.transpose(image, (1, 2, 0)))
    picture.thumbnail((IMAGE_MAX_SIZE, IMAGE_MAX_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _per_head_layers(attentions: list[JobAttention], max_codes: int) -> list[int]:
    """The layer indices whose per-head maps are kept (the same for every job): all if they fit, else as many as
    fit, evenly spread and always including the last layer."""
    n_layers = max(e.heads.shape[1] for e in attentions)
    base = sum(e.heads.shape[0] * (e.heads.shape[1] + 1) * e.heads[0, 0, 0].size for e in attentions)  # means+rollout
    extra = sum(e.heads.shape[0] * (e.heads.shape[2] - 1) * e.heads[0, 0, 0].size for e in attentions)  # per layer
    fit = n_layers if extra == 0 else int(np.clip((max_codes - base) // extra, 0, n_layers))
    if fit == 0:
        return []
    return sorted({int(i) for i in np.round(np.linspace(n_layers - 1, 0, fit))})


def _quantise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps [n, ...] as uint8 codes between each map's min and max, and those [n, 2] (float32)."""
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    low, high = flat.min(axis=1), flat.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    codes = np.round((flat - low[:, None]) / span[:, None] * LEVELS).astype(np.uint8)
    return codes, np.stack([low, high], axis=1).astype(np.float32)


def _job(e: JobAttention, image_keys: list[str], per_head: list[int]) -> dict:
    """One job: its label and colour, where each explorer image is in its arrays, right/wrong per image, and the
    maps in storage order: per exported image, per layer the heads (layers in ``perHead``) or the head mean, then
    the rollout."""
    n_images, n_layers = e.heads.shape[:2]
    stored = []
    for i in range(n_images):
        for layer in range(n_layers):
            stored.append(e.heads[i, layer] if layer in per_head else e.maps[i, layer][None])
        stored.append(e.rollout[i][None])
    codes, ranges = _quantise(np.concatenate(stored))
    own = {_key(image): i for i, image in reversed(list(enumerate(e.images)))}  # the first of duplicates
    slots = [own.get(key) for key in image_keys]
    return {
        "label": e.job.label,
        "colour": to_hex(job_style(e.index).color),
        "grid": list(e.heads.shape[-2:]),
        "layers": list(e.layer_names),
        "heads": int(e.heads.shape[2]),
        "perHead": [layer for layer in per_head if layer < n_layers],
        "slots": slots,
        "marks": [_mark(e, slot) for slot in slots],
        "codes": base64.b64encode(zlib.compress(codes.tobytes(), 9)).decode("ascii"),
        "ranges": base64.b64encode(ranges.astype("<f4").tobytes()).decode("ascii"),
    }


def _mark(e: JobAttention, slot: int | None) -> dict | None:
    """Whether the job classified the image right (None: image not exported by this job, or no predictions saved)."""
    if slot is None or e.predictions is None:
        return None
    predicted = int(e.predictions[slot])
    return {"predicted": e.class_names[predicted], "correct": predicted == int(e.labels[slot])}
