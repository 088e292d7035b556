"""Decode image files into one uint8 tensor, converting every mode to RGB and naming any bad file."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDecodeError(RuntimeError):
    """An image file could not be read; the message names the file and what to do."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16/32-bit integer images are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:  # floats in [0, 1]; a fixed range keeps images comparable
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite over black, the usual convention for premultiplied-looking data sets.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_image(path: str | Path) -> np.ndarray:
    """Read one file as an HxWx3 uint8 array."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(_to_rgb(img), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(
            f"Cannot decode image '{path}': {e}. The file is corrupt, truncated, empty or not an image; "
            "remove or replace it and run again."
        ) from e


def resize_image(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 array resized to ``size`` (H, W) as decoding does for images of an odd size."""
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR))


def decode_images(paths: Sequence[str | Path], size: tuple[int, int] | None = None, threads: int = 4) -> torch.Tensor:
    """Decode ``paths`` to a [N, 3, H, W] uint8 tensor.

    Images whose size differs from ``size`` (default: the most common size among them) are resized,
    so folders of mixed sizes load into one tensor.
    """
    if not paths:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        arrays = list(pool.map(decode_image, paths, chunksize=256))
    if size is None:
        size = Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]
    size = tuple(size)
    odd = [i for i, a in enumerate(arrays) if a.shape[:2] != size]
    if odd:
        log.warning(
            "Resizing %d of %d images to %dx%d (mixed sizes, e.g. '%s').",
            len(odd),
            len(arrays),
            size[0],
            size[1],
            paths[odd[0]],
        )
        for i in odd:
            arrays[i] = resize_image(arrays[i], size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
