"""What an exact resume needs beyond Lightning's own checkpoint state.

Lightning restores weights, optimizer, scheduler, loop counters and callback states, but not the
random number generators (augmentation, dropout) nor the position inside a shuffled epoch. This
callback stores both in every checkpoint, with the run's overrides so that a checkpoint is never
continued by a different experiment by mistake.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from gnr650.runs.resume import ResumeError, comparable, differences

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunState(pl.Callback):
    """Saves RNG states, the batches done in the current epoch and the run's overrides; restores them on resume.

    The RNG states are put back when training starts after a resume: after set-up, sanity checks
    and the configured callbacks' ``on_train_start`` (train.py adds this one after them), so nothing
    before the first batch shifts them; the data loaders draw nothing from them. A checkpoint
    written mid-epoch makes the train sampler skip the batches already trained on.
    ``check_overrides``: refuse a checkpoint written by a run with other overrides.
    """

    def __init__(self, overrides: list[str] | None = None, check_overrides: bool = True):
        self.overrides = comparable(overrides or [])
        self.check_overrides = check_overrides
        self.batches_done = 0  # training batches finished in the current epoch
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng(), "batches_done": self.batches_done, "overrides": self.overrides}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = state.get("overrides")
        if self.check_overrides and theirs is not None and theirs != self.overrides:
            raise ResumeError(
                f"The checkpoint was written by a run with other overrides; this run has "
                f"{differences(theirs, self.overrides)}. "
                "Resume with the same overrides, or start from the checkpoint anyway with ckpt_path=<file>."
            )
        self._pending = state

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches_done = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        done = state.get("batches_done", 0)
        if 0 < done < trainer.num_training_batches:
            loader = trainer.train_dataloader
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "skip"):
                sampler.skip(done * loader.batch_size)
            else:
                log.warning(
                    "Resuming mid-epoch with a sampler that cannot skip: the rest of this epoch sees other batches."
                )
            self.batches_done = done
        if "rng" in state:
            restore_rng(state["rng"])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches_done = batch_idx + 1
