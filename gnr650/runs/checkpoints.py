"""Reading checkpoints safely: never executing pickled code, and saying which file is wrong and why.

``trainer.fit`` / ``trainer.test`` load with ``weights_only=True`` (train.py); this module checks the
file first and turns torch's refusal into a message that names it. (Writing is atomic through the
checkpoint IO plugin of configs/trainer/default.yaml.)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gnr650 import files
from gnr650.errors import UserError


class CheckpointError(RuntimeError, UserError):
    """A checkpoint is missing, unreadable, or would need arbitrary code to load; the message names the file."""


def check_checkpoint(path: str | os.PathLike) -> None:
    """Training can continue from the file: it exists, is a complete torch archive (a torn or foreign file
    fails here, not deep in torch) and holds the optimizer state, not only weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Cannot read checkpoint '{path}': it is truncated, corrupt or not a PyTorch checkpoint. "
            "Pick another with ckpt_path=<file>."
        )
    with refusing_pickled_code(path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    if "optimizer_states" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint '{path}' holds weights only (as the best-on-val checkpoint is saved), so training cannot "
            "continue from it. Continue from the run's full checkpoint: resume=true, or "
            "ckpt_path=<run dir>/checkpoints/last.ckpt."
        )


@contextmanager
def refusing_pickled_code(path: str | os.PathLike | None) -> Iterator[None]:
    """Turn torch's ``weights_only`` refusal while loading the checkpoint ``path`` into a ``CheckpointError``."""
    with files.refusing_pickled_code(
        path, CheckpointError, "checkpoint", "Only tensors and plain Python values are read from checkpoints."
    ):
        yield
