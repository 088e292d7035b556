"""Stop at a non-finite training loss, before a checkpoint of diverged weights replaces a good one."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from gnr650.errors import UserError


class DivergenceError(RuntimeError, UserError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class DivergenceGuard(pl.Callback):
    """Records the first step whose loss is not finite, on the device (no host sync per step).

    The record is read every ``check_every_n_steps`` steps, at each epoch end and before every
    checkpoint save (the guard's ``on_save_checkpoint`` runs before the file is written), so no
    saved checkpoint holds weights trained on a non-finite loss.
    """

    def __init__(self, check_every_n_steps: int = 50):
        if not isinstance(check_every_n_steps, int) or check_every_n_steps < 0:
            raise ValueError(f"check_every_n_steps must be a non-negative integer (got {check_every_n_steps!r}).")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None
        self._bad_loss: torch.Tensor | None = None
        self._batches: torch.Tensor | None = None
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._bad_loss = torch.zeros((), device=device)
        self._batches = torch.zeros((), dtype=torch.long, device=device)
        self._start_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self._first_bad is None or not isinstance(loss, torch.Tensor):
            return
        new = (~torch.isfinite(loss.detach().float())) & (self._first_bad < 0)
        self._first_bad = torch.where(new, self._batches, self._first_bad)
        self._bad_loss = torch.where(new, loss.detach().float(), self._bad_loss)
        self._batches += 1
        if self.check_every_n_steps and (batch_idx + 1) % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None or int(self._first_bad) < 0:
            return
        step = self._start_step + int(self._first_bad)
        self._first_bad = None  # report once
        raise DivergenceError(
            f"Training diverged: the loss was {float(self._bad_loss)} at global step {step} (epoch "
            f"{trainer.current_epoch}). Stopped; {_last_good(trainer)} Lower the learning rate (optimizer.lr_head / "
            "optimizer.lr_backbone) or add warm-up (optimizer.warmup_epochs), then train again."
        )


def _last_good(trainer: pl.Trainer) -> str:
    callbacks = trainer.checkpoint_callbacks  # the resume point (last) before a weights-only best
    paths = [p for attr in ("last_model_path", "best_model_path") for cb in callbacks if (p := getattr(cb, attr, ""))]
    if not paths:
        return "no checkpoint had been saved before it."
    return f"the last good checkpoint is {paths[0]} (no checkpoint after the divergence was written)."
