"""Decode image files into uint8 [N, 3, H, W] data, converting every mode to RGB and naming any bad file."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gnr650.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# Unreadable files a message lists by name; the rest are counted.
LISTED_UNREADABLE = 20


class ImageDecodeError(RuntimeError, UserError):
    """Image files could not be read; the message names them and what to do. ``unreadable``: (file, reason) of each."""

    def __init__(self, message: str, unreadable: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.unreadable = list(unreadable)


def unreadable_error(unreadable: Sequence[tuple[str, str]]) -> ImageDecodeError:
    """One error for every unreadable file of a data set: the first ``LISTED_UNREADABLE`` with their reasons, the
    count of the rest, and the two fixes."""
    listed = "\n".join(f"  - '{path}': {reason}" for path, reason in unreadable[:LISTED_UNREADABLE])
    more = len(unreadable) - LISTED_UNREADABLE
    return ImageDecodeError(
        f"{len(unreadable)} image file{'s' if len(unreadable) != 1 else ''} cannot be decoded (corrupt, truncated, "
        f"empty or not an image):\n{listed}" + (f"\n  ... and {more} more" if more > 0 else "") + "\n"
        "Remove or replace them and run again, or add dataset.skip_unreadable=true to train without them.",
        unreadable,
    )


def _reason(path: str | Path, error: Exception) -> str:
    """Why a file cannot be read, in words (PIL's message for a zero-byte file or a non-image names neither)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return "the file is empty"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (no image format recognises its header)"
    return str(error)


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


def decode_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read one file as an HxWx3 uint8 array, resized to ``size`` ([H, W]) when given.

    JPEGs are decoded at a reduced DCT scale (``Image.draft``, never below ``size``) when that is enough,
    which makes shrinking large photos several times faster.
    """
    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG" and 2 * size[0] <= img.height and 2 * size[1] <= img.width:
                img.draft("RGB", (size[1], size[0]))
            img.load()
            arr = np.asarray(_to_rgb(img), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(
            f"Cannot decode image '{path}': {_reason(path, e)}. The file is corrupt, truncated, empty or not an "
            "image; remove or replace it and run again.",
            [(str(path), _reason(path, e))],
        ) from None
    if size is not None and arr.shape[:2] != tuple(size):
        arr = resize_image(arr, size)
    return arr


def header_size(path: str | Path) -> tuple[int, int]:
    """[H, W] of an image file from its header alone (PIL opens lazily: no pixels are decoded)."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(
            f"Cannot read the header of image '{path}': {_reason(path, e)}. The file is corrupt, empty or not an "
            "image; remove or replace it and run again.",
            [(str(path), _reason(path, e))],
        ) from None


def read_headers(paths: Sequence[str | Path]) -> tuple[dict[int, tuple[int, int]], list[tuple[int, str]]]:
    """The [H, W] of each readable file by its index in ``paths``, and (index, reason) of each unreadable one."""
    sizes, unreadable = {}, []
    for i, path in enumerate(paths):
        try:
            sizes[i] = header_size(path)
        except ImageDecodeError as e:
            unreadable.append((i, e.unreadable[0][1]))
    return sizes, unreadable


def resize_image(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 array resized to ``size`` (H, W) as decoding does for images of an odd size."""
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR))


def check_decode_size(decode_size) -> int | tuple[int, int] | None:
    """``dataset.decode_size``: null, a positive int (the shorter side) or [H, W] of positive ints."""
    if decode_size is None:
        return None
    if isinstance(decode_size, int) and not isinstance(decode_size, bool) and decode_size > 0:
        return decode_size
    if (
        not isinstance(decode_size, (str, bytes))
        and hasattr(decode_size, "__len__")
        and len(decode_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in decode_size)
    ):
        return int(decode_size[0]), int(decode_size[1])
    raise ValueError(
        f"dataset.decode_size must be null (native size), a positive int (the shorter side) or [H, W] "
        f"(got {decode_size!r})."
    )


def target_size(sizes: Sequence[tuple[int, int]], decode_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """The one [H, W] every image is stored at: ``decode_size`` as [H, W]; else the most common size,
    scaled so that its shorter side is ``decode_size`` when that is an int."""
    if isinstance(decode_size, tuple):
        return decode_size
    h, w = Counter(sizes).most_common(1)[0][0]
    if decode_size is None:
        return h, w
    scale = decode_size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def decode_chunks(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    threads: int = 4,
    chunk_bytes: int = 64 << 20,
    unreadable: list[tuple[int, str]] | None = None,
) -> Iterator[np.ndarray]:
    """Decode ``paths`` at ``size`` into [k, 3, H, W] uint8 chunks of about ``chunk_bytes``, in order.

    One chunk buffer is reused (the consumer must copy or write it before asking for the next), so
    decoding holds a bounded amount of memory whatever the number of images. With ``unreadable`` given, a file
    that cannot be decoded is appended to it as (index, reason) and its image left black, so that one pass finds
    every bad file; without it, the first one raises its ``ImageDecodeError``.
    """
    per_chunk = max(1, chunk_bytes // (3 * size[0] * size[1]))
    buffer = np.empty((min(per_chunk, len(paths)), 3, *size), dtype=np.uint8)

    def decode(path: str | Path) -> np.ndarray | ImageDecodeError:
        try:
            return decode_image(path, size)
        except ImageDecodeError as e:
            if unreadable is None:
                raise
            return e

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), per_chunk):
            part = paths[start : start + per_chunk]
            for j, arr in enumerate(pool.map(decode, part)):
                if isinstance(arr, ImageDecodeError):
                    unreadable.append((start + j, arr.unreadable[0][1]))
                    buffer[j] = 0
                else:
                    buffer[j] = arr.transpose(2, 0, 1)
            yield buffer[: len(part)]


def warn_mixed_sizes(paths: Sequence[str | Path], sizes: Sequence[tuple[int, int]], size: tuple[int, int]) -> None:
    odd = [i for i, s in enumerate(sizes) if tuple(s) != tuple(size)]
    if odd:
        log.warning(
            "Resizing %d of %d images to %dx%d (mixed sizes or dataset.decode_size, e.g. '%s').",
            len(odd),
            len(sizes),
            size[0],
            size[1],
            paths[odd[0]],
        )


def decode_images(
    paths: Sequence[str | Path], decode_size: int | tuple[int, int] | None = None, threads: int = 4
) -> torch.Tensor:
    """Decode ``paths`` to a [N, 3, H, W] uint8 tensor, preallocated (no second copy at the peak).

    Images whose size differs from the target (see ``target_size``) are resized, so folders of mixed
    sizes load into one tensor.
    """
    if not paths:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    sizes = [header_size(p) for p in paths]
    size = target_size(sizes, decode_size)
    warn_mixed_sizes(paths, sizes, size)
    return decode_into_memory(paths, size, threads)


def decode_into_memory(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    threads: int = 4,
    unreadable: list[tuple[int, str]] | None = None,
) -> torch.Tensor:
    """Decode ``paths`` at ``size`` chunk by chunk into one preallocated [N, 3, H, W] uint8 tensor (``unreadable``:
    as in ``decode_chunks``)."""
    out = torch.empty(len(paths), 3, *size, dtype=torch.uint8)
    start = 0
    for chunk in decode_chunks(paths, size, threads, unreadable=unreadable):
        out[start : start + len(chunk)] = torch.from_numpy(chunk)
        start += len(chunk)
    return out


def oversized_warning(stored_hw: Sequence[int], model_size: int | None, decode_size) -> str | None:
    """A warning when the stored images' shorter side is over twice the model input's (they are resized on the
    device every step anyway): ``dataset.decode_size`` would store them smaller, once."""
    h, w = stored_hw
    if decode_size is not None or model_size is None or min(h, w) <= 2 * model_size:
        return None
    return (
        f"Images are stored at {h}x{w} but the model sees {model_size}x{model_size}: set dataset.decode_size="
        f"{model_size} to decode them at that shorter side ({(min(h, w) / model_size) ** 2:.0f}x less memory or "
        "disk, faster batches)."
    )
