"""Cheaper checkpoint writing (the ``trainer.plugins`` entry in configs/trainer/default.yaml).

With ResNet-18 and its AdamW state a checkpoint is ~130 MB, and ModelCheckpoint writes two per
epoch when validation improves (the best and ``last.ckpt``): on this study's short CPU epochs that
was a quarter of the epoch. Lightning's default also serialises each checkpoint into memory first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def _fingerprint(checkpoint: dict[str, Any]) -> tuple:
    """Training step plus storage and version counter of every weight and optimizer tensor: equal
    fingerprints mean no tensor was replaced or modified in place in between."""
    tensors = list(checkpoint.get("state_dict", {}).values())
    for optimizer in checkpoint.get("optimizer_states", []):
        tensors += [t for state in optimizer.get("state", {}).values() for t in state.values() if torch.is_tensor(t)]
    return (checkpoint.get("epoch"), checkpoint.get("global_step"), tuple((t.data_ptr(), t._version) for t in tensors))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except OSError:  # gone, another file system, or no hard links there
        return False


class LocalCheckpointIO(TorchCheckpointIO):
    """Local files: ``torch.save`` into a temporary file beside the target, then an atomic rename.

    A checkpoint of the same step with the same tensors as the previous one (ModelCheckpoint's best,
    then ``last.ckpt``) becomes a hard link to that file instead of a second write, as Lightning's
    ``save_last="link"`` does but with no symlink to dangle. Remote URLs use Lightning's default.
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: tuple[tuple, Path] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fingerprint = _fingerprint(checkpoint)
        same = self._previous is not None and self._previous[0] == fingerprint
        if same and _same_file(self._previous[1], path):
            return  # already this state (ModelCheckpoint's last.ckpt, then the run's own)
        tmp.unlink(missing_ok=True)  # never write through a leftover: it may share its data with a checkpoint
        if not (same and _link(self._previous[1], tmp)):
            torch.save(checkpoint, tmp)
        os.replace(tmp, path)
        self._previous = (fingerprint, path)
