"""``artifacts/test_predictions.npz``: the final evaluation's per-image test predictions, so that the sweep summary
can put confidence intervals on accuracies and test whether two jobs differ on the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gnr650.files import atomic_write
from gnr650.interpret.index import PHASE_END, ArtifactKind, append_to_index, entry

FILE_NAME = "test_predictions.npz"


def save_test_predictions(artifacts_dir: str | Path, predictions: dict[str, torch.Tensor], epoch: int | None) -> Path:
    """Write ``indices`` (position in the test split), ``labels``, ``predicted`` and ``probabilities`` and
    list the file in the index."""
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "indices": np.arange(len(predictions["labels"]), dtype=np.int64),
        "labels": predictions["labels"].numpy().astype(np.int64),
        "predicted": predictions["predicted"].numpy().astype(np.int64),
        "probabilities": predictions["probabilities"].numpy().astype(np.float32),
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz" to it
            np.savez_compressed(f, **arrays)

    path = atomic_write(artifacts_dir / FILE_NAME, write)
    append_to_index(artifacts_dir, [entry(ArtifactKind.TEST_PREDICTIONS, FILE_NAME, phase=PHASE_END, epoch=epoch)])
    return path
