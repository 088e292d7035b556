"""On-disk cache of decoded splits, keyed by the source files so stale data is never reused."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gnr650.files import atomic_write, ensure_writable

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def fingerprint(files: Sequence[Path], extra: dict | None = None) -> str:
    """Hash of names, sizes and mtimes of ``files`` (plus ``extra`` settings)."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "extra": extra or {}}, sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _writable_dir(candidates: Sequence[Path]) -> Path | None:
    for d in candidates:
        try:
            ensure_writable(d)
            return d
        except OSError:
            continue
    return None


def cached_tensors(
    name: str,
    files: Sequence[Path],
    build: Callable[[], dict[str, torch.Tensor]],
    cache_dir: str | None,
    data_root: Path,
    extra: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``build()``'s tensors, from the cache when the source files are unchanged.

    The cache lives in ``cache_dir`` if given, else beside the data (``<root>/.gnr650-cache``),
    else in ``~/.cache/gnr650`` when the data folder is read-only.
    """
    key = fingerprint(files, extra)
    candidates = [Path(cache_dir)] if cache_dir else [data_root / ".gnr650-cache", Path.home() / ".cache" / "gnr650"]
    for d in candidates:
        path = d / f"{name}-{key}.pt"
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                log.warning("Ignoring unreadable cache %s (%s); rebuilding.", path, e)
    tensors = build()
    target = _writable_dir(candidates)
    if target is None:
        log.warning("No writable cache folder among %s; decoded data is not cached.", [str(c) for c in candidates])
    else:
        atomic_write(target / f"{name}-{key}.pt", lambda tmp: torch.save(tensors, tmp))
        log.info("Cached decoded %s in %s", name, target)
    return tensors


def decoded_split(
    tag: str,
    files: Sequence[Path],
    labels: Sequence[int],
    cache_dir: str | None,
    data_root: Path,
    size: tuple[int, int] | None = None,
):
    """Decode ``files`` once (cached on disk) into a ``Split`` with ``labels``."""
    from gnr650.data.datamodule import Split
    from gnr650.data.images import decode_images

    tensors = cached_tensors(
        tag,
        files,
        lambda: {"images": decode_images(files, size), "labels": torch.as_tensor(list(labels), dtype=torch.int64)},
        cache_dir,
        data_root,
        extra={"size": list(size) if size else None},
    )
    return Split(tensors["images"], tensors["labels"], [str(f) for f in files])
