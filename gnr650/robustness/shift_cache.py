"""Shifted images built once per (images, shift, level) and kept beside the decoded stores.

The same store format, lock and atomic write as ``gnr650.data.decoded_store``; the key hashes the evaluated images'
pixels and their split positions (what a shift is computed from), the shift, its level, the suite's seed and the
``imagecorruptions`` release, so a store is reused exactly when it would be rebuilt identically: by every job of a
sweep, and by both storages (``storage=memory|disk`` decode the same pixels). Stores are memory-mapped, so the suite
holds one batch of shifted images at a time.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from gnr650.data.decoded_store import building, cache_dirs, find_store, open_store, writable_with_room, write_store
from gnr650.robustness.shifts import Shift, shift_images

log = logging.getLogger(__name__)

SUITE_VERSION = 1  # bump when a shift's definition changes: older stores are then never read
CHUNK = 256  # images shifted and written at a time


@cache
def _corruptions_release() -> str:
    try:
        return version("imagecorruptions-imaug")
    except PackageNotFoundError:
        return "none"


def images_digest(images: np.ndarray, indices: np.ndarray) -> str:
    """Hash of the evaluated images' pixels and split positions: the part of the key every shift shares."""
    h = hashlib.sha256(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(indices, dtype=np.int64).data)
    return h.hexdigest()


class ShiftCache:
    """Shifted copies of one set of images (uint8 [N, 3, H, W], ``indices`` their positions in the split)."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, seed: int, cache_dir: str | None):
        self.images, self.indices, self.seed = images, indices, seed
        self.digest = images_digest(images, indices)
        self.dirs = cache_dirs(cache_dir)
        self.writable = writable_with_room(self.dirs, 0)[0]
        if self.writable is None:
            log.warning("No writable cache folder among %s: shifted images are rebuilt in every job.", self.dirs)

    def key(self, shift: Shift, level: int) -> str:
        parts = [self.digest, shift.name, level, self.seed, SUITE_VERSION, _corruptions_release()]
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def get(self, shift: Shift, level: int) -> torch.Tensor:
        """The images under ``shift`` at ``level``: read from a store, else built (and stored where possible)."""
        if level == 0:
            return torch.from_numpy(self.images)
        key = self.key(shift, level)
        name = f"shift-{shift.name}-{level}-{key[:20]}.u8"
        found = find_store(self.dirs, name, key)
        if found is None and self.writable is not None:
            with building(self.writable, name):
                found = find_store(self.dirs, name, key)  # another process may have built it meanwhile
                if found is None:
                    found = write_store(self.writable / name, key, self.images.shape, self._chunks(shift, level))
        if found is None:
            return torch.from_numpy(np.concatenate(list(self._chunks(shift, level))))
        return open_store(found, in_memory=False)

    def _chunks(self, shift: Shift, level: int):
        for start in range(0, len(self.images), CHUNK):
            part = slice(start, start + CHUNK)
            yield shift_images(shift, level, self.images[part], self.indices[part], self.seed)
