"""The LightningModule for every study: classification with per-strategy freezing and two learning rates."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from gnr650.data import SPLITS
from gnr650.finetune.strategies import apply_freeze, set_mode
from gnr650.training.metrics import DeviceAccuracy
from gnr650.training.optim import warmup_cosine_optimizer
from gnr650.training.preprocess import DevicePreprocess

# Checkpoint key of the training epoch's loss and accuracy accumulators (see on_save_checkpoint).
TRAIN_EPOCH_KEY = "train_epoch_accumulators"


def _accuracy(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {"acc": DeviceAccuracy(num_classes, average="micro"), "acc_macro": DeviceAccuracy(num_classes, average="macro")}
    )


class ClassificationModule(pl.LightningModule):
    """Cross-entropy classifier over ``net``.

    ``trainable`` names the modules that learn (see ``gnr650.finetune.strategies``); the others are frozen and
    stay in eval mode. ``head`` parameters use ``lr_head``, the rest ``lr_backbone``, each times its
    ``lr_scales`` entry (layer-wise decay) if given. With ``lp_epochs`` (LP-FT, Kumar et al. 2022) the
    ``head`` modules alone train for the first ``lp_epochs`` epochs (the rest frozen, in eval mode, at lr 0:
    its warm-up and cosine start after them), then all of ``trainable``. The test stage
    is the final evaluation: the datamodule's ``final_splits`` (all of ``SPLITS`` unless a search leaves test out),
    each split measured separately.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocess: DevicePreprocess,
        class_names: list[str],
        trainable: list[str],
        head: list[str],
        lr_head: float = 1e-3,
        lr_backbone: float = 1e-4,
        weight_decay: float = 0.05,
        algorithm: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        lr_scales: dict[str, float] | None = None,
        lp_epochs: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "preprocess", "lr_scales"])
        self.lr_scales = lr_scales
        self.net = net
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.trainable = list(trainable)
        self.head = list(head)
        self.lp_epochs = lp_epochs
        # What trains in the current phase; all of ``trainable`` until a fit starts (so the optimizer holds it all).
        self.active = self.trainable
        apply_freeze(net, self.trainable)
        k = len(class_names)
        self.train_metrics = _accuracy(k).clone(prefix="train/")
        self.val_metrics = _accuracy(k).clone(prefix="val/")
        # Epoch means of the loss, on the device ("disable": no NaN check, which would sync with the host).
        self.train_loss, self.val_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        # One entry per split, in SPLITS order (a ModuleDict cannot hold a key named "train").
        self.final_metrics = nn.ModuleList(
            MetricCollection(
                {
                    "acc": MulticlassAccuracy(k, average="micro"),
                    "acc_macro": MulticlassAccuracy(k, average="macro"),
                    "per_class": MulticlassAccuracy(k, average=None),
                    "confusion": MulticlassConfusionMatrix(k),
                }
            )
            for _ in SPLITS
        )
        self.final_loss = nn.ModuleList(MeanMetric() for _ in SPLITS)
        self.final_results: dict[str, dict] = {}
        # Per-image test predictions of the final evaluation, in test-loader order (for significance tests).
        self.test_predictions: dict[str, torch.Tensor] = {}
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Set by gnr650.finetune.feature_cache: batches then hold the frozen prefix's output and only this runs on them.
        self.suffix = None
        # Training images this process has stepped on (not checkpointed: a resumed run counts its own), for images/s.
        self.images_seen = 0

    def train(self, mode: bool = True):
        super().train(mode)
        set_mode(self.net, self.active, mode)
        return self

    def on_fit_start(self):
        # Lightning keeps whatever mode the modules are in; a fresh module is all in train mode.
        self.train()

    def phase_trainable(self, epoch: int) -> list[str]:
        """What trains in ``epoch`` (from 0): LP-FT's head during the probe epochs, else ``trainable``."""
        return self.head if epoch < self.lp_epochs else self.trainable

    def _enter_phase(self) -> None:
        self.active = self.phase_trainable(self.current_epoch)
        apply_freeze(self.net, self.active)
        self.train()

    # The phase follows from the epoch number: set at every epoch start and when a fit starts, since a run resumed
    # inside an epoch starts without the epoch-start hook.
    def on_train_start(self):
        self._enter_phase()

    def on_train_epoch_start(self):
        self._enter_phase()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if self.suffix is not None:  # cached features: preprocessed, in the dtype the prefix returned
            return images.to(self.dtype), labels
        augment = self.trainer is not None and self.trainer.training
        return self.preprocess(images, augment=augment), labels

    def _step(self, batch):
        x, y = batch
        logits = self(x) if self.suffix is None else self.suffix(x)
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing), logits, y

    def training_step(self, batch, batch_idx):
        loss, logits, y = self._step(batch)
        self.images_seen += len(y)
        self.train_metrics.update(logits, y)
        self.train_loss.update(loss.detach(), weight=y.numel())
        return loss

    # Logged once per epoch (a self.log per step costs ~0.5 ms). Computed (synced across ranks) and reset here,
    # before the epoch-end checkpoints are written, so that those save the reset accumulators.
    def on_train_epoch_end(self):
        self.log("train/loss", self.train_loss.compute())
        self.log_dict(self.train_metrics.compute())
        self.train_loss.reset()
        self.train_metrics.reset()

    def _train_accumulators(self) -> dict[str, Metric]:
        return {"loss": self.train_loss, **dict(self.train_metrics.items(keep_base=True, copy_state=False))}

    # A checkpoint written inside an epoch holds the epoch's accumulators so far, so that a run resumed from it
    # logs the whole epoch. Not as persistent metric states: those would enter the state dict, which must stay the
    # network's weights (model.weights=<checkpoint>).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "optimizer_states" in checkpoint:  # a resumable checkpoint, not a weights-only one
            checkpoint[TRAIN_EPOCH_KEY] = {name: m.metric_state for name, m in self._train_accumulators().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        accumulators = self._train_accumulators()
        for name, states in checkpoint.get(TRAIN_EPOCH_KEY, {}).items():
            for state, value in states.items():
                getattr(accumulators[name], state).copy_(value)

    def validation_step(self, batch, batch_idx):
        loss, logits, y = self._step(batch)
        self.val_metrics.update(logits, y)
        self.val_loss.update(loss, weight=y.numel())

    def on_validation_epoch_end(self):
        self.log("val/loss", self.val_loss)
        self.log_dict(self.val_metrics)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        loss, logits, y = self._step(batch)
        split = self.trainer.datamodule.final_splits[dataloader_idx]
        self.final_metrics[SPLITS.index(split)].update(logits, y)
        self.final_loss[SPLITS.index(split)].update(loss, weight=y.numel())
        if split == "test":
            self._test_outputs.append((y.detach(), logits.detach().float().softmax(1)))

    def on_test_epoch_end(self):
        if self._test_outputs:
            labels, probs = (torch.cat(t).cpu() for t in zip(*self._test_outputs))
            self.test_predictions = {"labels": labels, "predicted": probs.argmax(1), "probabilities": probs}
            self._test_outputs = []
        for i, split in enumerate(SPLITS):
            if not self.final_loss[i].update_called:
                continue
            values = self.final_metrics[i].compute()
            loss = self.final_loss[i].compute()
            self.final_results[split] = {
                "acc": float(values["acc"]),
                "acc_macro": float(values["acc_macro"]),
                "loss": float(loss),
                "per_class": dict(zip(self.class_names, values["per_class"].tolist())),
                "confusion_matrix": values["confusion"].long().tolist(),
            }
            self.log_dict(
                {
                    f"final/{split}/acc": values["acc"],
                    f"final/{split}/acc_macro": values["acc_macro"],
                    f"final/{split}/loss": loss,
                },
                add_dataloader_idx=False,
            )
            self.final_metrics[i].reset()
            self.final_loss[i].reset()

    def configure_optimizers(self):
        optimizer, scheduler = warmup_cosine_optimizer(
            self.net,
            self.head,
            self.hparams,
            self.trainer.estimated_stepping_batches,
            self.trainer.max_epochs,
            self.device,
            self.lr_scales,
            backbone_start_epoch=self.lp_epochs,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
