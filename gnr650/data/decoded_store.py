"""Decoded splits on disk, one store file per split, for both storages: the disk storage memory-maps it, the memory
storage reads it into RAM. Keyed by the source files and the decode settings, so stale data is never reused.

A store is a header (a magic line, then a JSON line: format version, key, shape, and the positions of the files left
out as unreadable; padded to a multiple of 4 KiB) followed by the uint8 [N, 3, H, W] pixels in C order. It is mapped
with numpy's memmap (copy-on-write: pages come from the page cache, which holds the file once for every process on
the node that maps it). It is written once, in chunks as images are decoded, to a temporary name that is renamed
when complete (``gnr650.files.atomic_write``), while a lock file keeps the other processes of the node (DDP ranks)
from building it too. A store whose header or length is wrong is not trusted: it is removed and rebuilt.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gnr650.data.datamodule import Split
from gnr650.data.images import (
    ImageDecodeError,
    decode_chunks,
    decode_into_memory,
    read_headers,
    target_size,
    unreadable_error,
    warn_mixed_sizes,
)
from gnr650.data.storage import SplitStorage, human_bytes
from gnr650.errors import UserError
from gnr650.files import atomic_write, ensure_writable

log = logging.getLogger(__name__)

CACHE_VERSION = 2
MAGIC = b"GNR650-DECODED-U8\n"
HEADER_BYTES = 4096
SUFFIX = ".u8"


class StoreError(RuntimeError, UserError):
    """A decoded store could not be written; the message says why and what to change."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gnr650``, else ``~/.cache/gnr650``: never the data folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gnr650"


def cache_dirs(cache_dir: str | None) -> list[Path]:
    """Where stores are looked for, in order: ``paths.cache_dir`` when set, then the default folder."""
    dirs = [Path(cache_dir)] if cache_dir else []
    return dirs + [d for d in [default_cache_dir()] if d not in dirs]


def fingerprint(files: Sequence[Path], extra: dict | None = None) -> str:
    """Hash of names, sizes and mtimes of ``files`` (plus ``extra`` settings)."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "extra": extra or {}}, sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _header(key: str, shape: tuple[int, ...], dropped: Sequence[int]) -> bytes:
    meta = {"version": CACHE_VERSION, "key": key, "shape": list(shape), "dropped": list(dropped)}
    body = MAGIC + json.dumps(meta).encode() + b"\n"
    return body.ljust(_header_bytes(len(body)), b"\0")


def _header_bytes(used: int) -> int:
    return -(-used // HEADER_BYTES) * HEADER_BYTES


class Stored(NamedTuple):
    """A complete store: its file, the image shape, the positions (in the split's file list) of the files left out
    as unreadable, and where the pixels start."""

    path: Path
    shape: tuple[int, ...]
    dropped: list[int]
    offset: int


def read_store(path: Path, key: str) -> Stored | None:
    """The complete, undamaged store at ``path`` made for ``key``, else None."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            line = f.readline(1 << 26)
            size = os.fstat(f.fileno()).st_size
        meta = json.loads(line)
        shape = tuple(int(v) for v in meta["shape"])
        dropped = [int(i) for i in meta.get("dropped", [])]
        if meta["version"] != CACHE_VERSION or meta["key"] != key or len(shape) != 4 or shape[1] != 3:
            return None
        offset = _header_bytes(len(MAGIC) + len(line))
        return Stored(path, shape, dropped, offset) if size == offset + math.prod(shape) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_store(dirs: Sequence[Path], name: str, key: str) -> Stored | None:
    """The first trustworthy store called ``name`` in ``dirs``; damaged ones are removed where possible."""
    for d in dirs:
        path = d / name
        if not path.exists():
            continue
        found = read_store(path, key)
        if found is not None:
            return found
        log.warning("Ignoring the damaged or incomplete decoded store %s; it is rebuilt.", path)
        with suppress(OSError):
            path.unlink()
    return None


@contextmanager
def building(directory: Path, name: str) -> Iterator[None]:
    """Hold the lock for building store ``name`` in ``directory`` (other processes wait), and remove the
    temporary files of writers that died before finishing it."""
    with open(directory / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in directory.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_chunk(f, chunk: np.ndarray) -> None:
    f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))


def write_store(
    path: Path, key: str, shape: tuple[int, ...], chunks: Iterator[np.ndarray], dropped: Sequence[int] = ()
) -> Stored:
    """Write the header and ``chunks`` (filling ``shape`` exactly) under a temporary name, then rename.

    The space is reserved first where the file system supports it; a full disk is a ``StoreError`` and
    the partial file is removed (as it is when ``chunks`` raises).
    """
    header = _header(key, shape, dropped)
    nbytes = len(header) + math.prod(shape)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
            f.write(header)
            for chunk in chunks:
                _write_chunk(f, chunk)
            f.flush()
            if f.tell() != nbytes:
                raise StoreError(f"Internal error: wrote {f.tell()} bytes of {nbytes} into the store '{path}'.")
            os.fsync(f.fileno())

    try:
        atomic_write(path, write)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreError(
            f"The disk filled up while writing the decoded store '{path}' ({human_bytes(nbytes)}); the partial "
            "file was removed. Free some space, point paths.cache_dir (GNR650_CACHE_DIR) at a disk with room, or "
            "set dataset.decode_size to store smaller images."
        ) from e
    return Stored(path, shape, list(dropped), len(header))


def open_store(store: Stored, in_memory: bool) -> torch.Tensor:
    """The store's images: read into RAM (``in_memory``), or a tensor over a copy-on-write memory map."""
    path, shape = store.path, store.shape
    if not in_memory:
        return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=store.offset, shape=shape))
    images = torch.empty(shape, dtype=torch.uint8)
    view, got = memoryview(images.numpy()).cast("B"), 0
    with open(path, "rb", buffering=0) as f:
        f.seek(store.offset)
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise StoreError(f"The decoded store '{path}' ended early; delete it and run again.")
            got += n
    return images


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer can still put into ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def writable_with_room(dirs: Sequence[Path], nbytes: int) -> tuple[Path | None, int | None, Path | None]:
    """The first folder of ``dirs`` that takes files and has ``nbytes`` free; else None, with the largest free
    room seen and where (None, None, None when no folder is writable)."""
    best: tuple[int, Path] | None = None
    for i, d in enumerate(dirs):
        try:
            ensure_writable(d)
        except OSError as e:
            if i == 0 and len(dirs) > 1:
                log.warning("Cache folder '%s' is not writable (%s); trying '%s'.", d, e.strerror or e, dirs[1])
            continue
        free = free_bytes(d)
        if free >= nbytes:
            return d, free, d
        if best is None or free > best[0]:
            best = (free, d)
    return (None, best[0], best[1]) if best else (None, None, None)


def decoded_splits(
    parts: dict[str, tuple[str, Sequence[Path], Sequence[int]]], storage: SplitStorage, skip_unreadable: bool
) -> dict[str, Split]:
    """``decoded_split`` of each named part (tag, files, labels), with the unreadable files of all parts reported
    together: one ``ImageDecodeError`` naming them, or with ``skip_unreadable`` one warning and splits without them.
    Logs one line with where each split is kept and why (``SplitStorage.summary``)."""
    splits: dict[str, Split] = {}
    unreadable: list[tuple[str, str]] = []
    for name, (tag, files, labels) in parts.items():
        try:
            splits[name] = decoded_split(tag, files, labels, storage, skip_unreadable)
        except ImageDecodeError as e:
            unreadable += e.unreadable
    if unreadable:
        raise unreadable_error(sorted(unreadable))
    log.info(storage.summary())
    skipped = [f for split in splits.values() for f in split.skipped]
    if skipped:
        log.warning(
            "Left out %d unreadable image file%s (dataset.skip_unreadable=true): %s%s",
            len(skipped),
            "s" if len(skipped) != 1 else "",
            ", ".join(f"'{f}'" for f in skipped[:5]),
            ", ..." if len(skipped) > 5 else "",
        )
    return splits


def decoded_split(
    tag: str, files: Sequence[Path], labels: Sequence[int], storage: SplitStorage, skip_unreadable: bool = False
) -> Split:
    """Decode ``files`` once into a store and return them as a ``Split`` with ``labels``, kept where ``storage``
    decides: in memory, or memory-mapped from the store.

    Before decoding, the decoded size is estimated from the image headers and checked against the memory
    budget and the free disk. When no cache folder can be written and memory is chosen, the images are
    decoded straight into memory, uncached. Unreadable files are all found in one pass and raised as one
    ``ImageDecodeError``; with ``skip_unreadable`` they are left out of the split (and of its store, whose key
    holds the setting) and listed in ``Split.skipped``.
    """
    labels_t = torch.as_tensor(list(labels), dtype=torch.int64)
    if not files:
        return Split(torch.empty(0, 3, 1, 1, dtype=torch.uint8), labels_t)
    key = fingerprint(
        files, {"decode_size": storage.decode_size} | ({"skip_unreadable": True} if skip_unreadable else {})
    )
    name = f"{tag}-{key}{SUFFIX}"
    dirs = cache_dirs(storage.cache_dir)
    found = find_store(dirs, name, key)
    if found is not None:
        nbytes = math.prod(found.shape)
        where = storage.choose(tag, nbytes, _describe(found.shape), nbytes, str(found.path.parent))
        return _split(open_store(found, where == "memory"), files, labels_t, found.dropped, where)

    sizes, unreadable = read_headers(files)
    if not sizes:
        raise unreadable_error(_named(files, unreadable))
    keep = sorted(sizes)
    size = target_size([sizes[i] for i in keep], storage.decode_size)
    shape = (len(keep), 3, *size)
    nbytes = math.prod(shape)
    target, free, free_dir = writable_with_room(dirs, HEADER_BYTES + nbytes)
    where = storage.choose(tag, nbytes, _describe(shape), free, str(free_dir) if free_dir else None)
    warn_mixed_sizes([files[i] for i in keep], [sizes[i] for i in keep], size)
    if unreadable and not skip_unreadable:  # to name every bad file, the others are decoded too (nothing stored)
        found_bad: list[tuple[int, str]] = []
        for _ in decode_chunks([files[i] for i in keep], size, unreadable=found_bad):
            pass
        raise unreadable_error(_named(files, unreadable + [(keep[j], reason) for j, reason in found_bad]))
    if target is None:
        log.warning(
            "No cache folder among %s can take the decoded %s; decoding into memory without caching it.",
            [str(d) for d in dirs],
            tag,
        )
        found_bad = []
        images = decode_into_memory([files[i] for i in keep], size, unreadable=found_bad)
        unreadable += [(keep[j], reason) for j, reason in found_bad]
        if found_bad and not skip_unreadable:
            raise unreadable_error(_named(files, unreadable))
        bad = {i for i, _ in unreadable}
        return _split(images[[j for j, i in enumerate(keep) if i not in bad]], files, labels_t, sorted(bad), where)
    with building(target, name):
        found = find_store([target], name, key)
        while found is None:  # a second pass only when decoding finds files whose header read
            log.info("Decoding %s (%s) into %s", tag, _describe((len(keep), 3, *size)), target / name)
            found_bad = []
            chunks = decode_chunks([files[i] for i in keep], size, unreadable=found_bad)
            dropped = sorted(set(range(len(files))) - set(keep))
            try:
                found = write_store(target / name, key, (len(keep), 3, *size), _readable(chunks, found_bad), dropped)
            except _FoundUnreadable:
                unreadable += [(keep[j], reason) for j, reason in found_bad]
                if not skip_unreadable:
                    raise unreadable_error(_named(files, unreadable)) from None
                keep = [i for j, i in enumerate(keep) if j not in {j for j, _ in found_bad}]
                if not keep:
                    raise unreadable_error(_named(files, unreadable)) from None
    return _split(open_store(found, where == "memory"), files, labels_t, found.dropped, where)


class _FoundUnreadable(Exception):
    """Raised by ``_readable`` after the last chunk, to abandon a store that holds black images for bad files."""


def _readable(chunks: Iterator[np.ndarray], found_bad: list) -> Iterator[np.ndarray]:
    """``chunks``, then ``_FoundUnreadable`` if decoding them found a bad file."""
    yield from chunks
    if found_bad:
        raise _FoundUnreadable


def _named(files: Sequence[Path], unreadable: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    return [(str(files[i]), reason) for i, reason in sorted(unreadable)]


def _split(
    images: torch.Tensor, files: Sequence[Path], labels: torch.Tensor, dropped: Sequence[int], where: str
) -> Split:
    """The split of ``images``: ``files`` and ``labels`` without the ``dropped`` positions, which become ``skipped``."""
    bad = set(dropped)
    keep = [i for i in range(len(files)) if i not in bad]
    return Split(images, labels[keep], [str(files[i]) for i in keep], where, [str(files[i]) for i in sorted(bad)])


def _describe(shape: tuple[int, ...]) -> str:
    return f"{shape[0]:,} images at {shape[2]}x{shape[3]}, {human_bytes(math.prod(shape))}"
