"""Where decoded splits are kept: in memory while they fit ``dataset.memory_budget_gb``, else memory-mapped from disk.

The budget is per node: under DDP every process on the node holds its own in-memory copy, while a disk
store is one file that the page cache holds once for all of them.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
from typing import NamedTuple

import torch

from gnr650.data.images import check_decode_size
from gnr650.errors import UserError

log = logging.getLogger(__name__)

STORAGES = ("auto", "memory", "disk")
# Default dataset.memory_budget_gb: this share of MemAvailable when the run starts (the rest is left to the
# model, the optimizer, the page cache and everything else on the node).
DEFAULT_BUDGET_SHARE = 0.5
GB = 1e9


def human_bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


class StorageError(RuntimeError, UserError):
    """Decoded data fits neither the memory budget nor the disk; the message names the settings to change."""


def memory_available() -> int:
    """Bytes the kernel can give without swapping (``MemAvailable``), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def release_freed_memory() -> bool:
    """Hand the heap memory the process has freed back to the OS (glibc's ``malloc_trim``); True if any was.

    glibc keeps freed batch and activation buffers for reuse, and once its mmap threshold has grown they come from
    the heap, which only shrinks from its top: on the disk-store path that was ~0.1 GB of the run's anonymous
    memory by the end of its first epoch (docs/benchmarks.md). Elsewhere (macOS, musl) nothing is done."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (AttributeError, OSError):
        return False


def processes_per_node(devices) -> int:
    """How many training processes a trainer's ``devices`` setting starts on this node (each holds its own
    in-memory copy): an int, a list of device ids, or ``auto``/-1 (every GPU, else one process)."""
    if isinstance(devices, str):
        devices = devices.strip()
        if devices.lstrip("-").isdigit():
            devices = int(devices)
        elif "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if not isinstance(devices, (int, str)) and hasattr(devices, "__len__"):
        return max(1, len(devices))
    return max(1, torch.cuda.device_count())


class Choice(NamedTuple):
    """Where one split is kept (``memory`` or ``disk``) and why; ``what`` describes the split."""

    tag: str
    what: str
    where: str
    why: str


def _listed(choices: list[Choice]) -> str:
    names = [f"{c.tag} ({c.what})" for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class SplitStorage:
    """The storage settings of one data module, deciding split by split as they are decoded.

    ``auto`` keeps a split in memory while everything this process holds so far, times the processes on
    the node, fits ``memory_budget_gb`` (default ``DEFAULT_BUDGET_SHARE`` of MemAvailable), else uses the disk
    store. ``memory`` and ``disk`` force one, after checking that it can work.
    """

    def __init__(
        self,
        storage: str = "auto",
        memory_budget_gb: float | None = None,
        decode_size=None,
        cache_dir: str | None = None,
        devices=1,
    ):
        if storage not in STORAGES:
            raise ValueError(f"dataset.storage must be one of {', '.join(STORAGES)} (got {storage!r}).")
        if memory_budget_gb is not None and (
            isinstance(memory_budget_gb, bool)
            or not isinstance(memory_budget_gb, (int, float))
            or memory_budget_gb <= 0
        ):
            raise ValueError(
                f"dataset.memory_budget_gb must be a positive number of GB, or null for {DEFAULT_BUDGET_SHARE:.0%} "
                f"of the available memory (got {memory_budget_gb!r})."
            )
        self.storage = storage
        self.decode_size = check_decode_size(decode_size)
        self.cache_dir = cache_dir
        self.processes = processes_per_node(devices)
        if memory_budget_gb is None:
            self.budget_bytes = int(DEFAULT_BUDGET_SHARE * memory_available())
            self.budget_text = f"null ({human_bytes(self.budget_bytes)}: {DEFAULT_BUDGET_SHARE:.0%} of MemAvailable)"
        else:
            self.budget_bytes = int(memory_budget_gb * GB)
            self.budget_text = f"{memory_budget_gb:g} GB"
        self.held = 0  # bytes of decoded splits this process already keeps in memory
        self.choices: list[Choice] = []  # every split's, in the order decided (``summary``)

    def choose(self, tag: str, nbytes: int, what: str, disk_free: int | None, disk_dir: str | None) -> str:
        """``memory`` or ``disk`` for a split of ``nbytes`` (``what`` describes it); ``disk_free`` is the room
        for its store (None: no writable cache folder; ``nbytes`` or more when the store exists)."""
        need = (self.held + nbytes) * self.processes
        per_node = f" x {self.processes} processes per node" if self.processes > 1 else ""
        fits_disk = disk_free is not None and disk_free >= nbytes
        if self.storage == "memory":
            available = memory_available()
            if need > available:
                raise StorageError(
                    f"dataset.storage=memory: {tag} ({what}) would bring the decoded data in memory to "
                    f"{human_bytes(need)}{per_node}, more than the {human_bytes(available)} available. Use "
                    "dataset.storage=auto (or disk), or a smaller dataset.decode_size."
                )
            choice, why = "memory", "dataset.storage=memory"
        elif self.storage == "disk":
            if not fits_disk:
                raise StorageError(self._no_room(tag, what, nbytes, disk_free, disk_dir, "dataset.storage=disk: "))
            choice, why = "disk", "dataset.storage=disk"
        elif need <= self.budget_bytes:
            choice = "memory"
            why = f"{human_bytes(need)}{per_node} fits dataset.memory_budget_gb={self.budget_text}"
        elif fits_disk:
            choice = "disk"
            why = f"{human_bytes(need)}{per_node} exceeds dataset.memory_budget_gb={self.budget_text}"
        else:
            raise StorageError(
                self._no_room(tag, what, nbytes, disk_free, disk_dir, "")
                + f" It does not fit in memory either: {human_bytes(need)}{per_node} exceeds "
                f"dataset.memory_budget_gb={self.budget_text}; raise it if the node has the memory."
            )
        self.choices.append(Choice(tag, what, choice, why))
        if choice == "memory":
            self.held += nbytes
        return choice

    def summary(self) -> str:
        """One line for every split chosen: where it is kept and why. The splits in memory share one reason, the
        last one's (its sum counts all of them); splits on disk are grouped while their reasons are the same."""
        in_memory = [c for c in self.choices if c.where == "memory"]
        on_disk = [c for c in self.choices if c.where == "disk"]
        parts = [f"{_listed(in_memory)} in memory, because {in_memory[-1].why}"] if in_memory else []
        parts += [
            f"{_listed(list(same))} memory-mapped from disk, because {why}"
            for why, same in itertools.groupby(on_disk, key=lambda c: c.why)
        ]
        return f"Storage: {'; '.join(parts)}."

    @staticmethod
    def _no_room(tag: str, what: str, nbytes: int, disk_free: int | None, disk_dir: str | None, prefix: str) -> str:
        where = (
            f"only {human_bytes(disk_free)} are free in the cache folder '{disk_dir}'"
            if disk_free is not None
            else "no cache folder is writable"
        )
        return (
            f"{prefix}the decoded {tag} ({what}) needs {human_bytes(nbytes)} on disk, but {where}. Set "
            "dataset.decode_size (e.g. 224: the shorter side) to store smaller images, or point paths.cache_dir "
            "(GNR650_CACHE_DIR) at a writable disk with room."
        )
