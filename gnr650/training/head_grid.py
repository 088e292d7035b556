"""A grid of linear probes trained at once on cached features (DINOv2's linear evaluation).

Every (learning rate, weight decay) pair gets its own copy of the freshly initialised head; each batch
of cached features goes through all of them (one pass over the cache per epoch), the summed loss gives
each head exactly its own gradient, and AdamW keeps one parameter group per setting, so each head
trains as it would alone with that setting. After every validation the head with the best validation
accuracy (the first on ties) is copied into the network's head, so checkpoints, resume and the final
evaluation all see the chosen head.
"""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from gnr650.finetune.strategies import StrategyError
from gnr650.training.module import ClassificationModule
from gnr650.training.optim import warmup_cosine_optimizer


class HeadGridModule(ClassificationModule):
    """``ClassificationModule`` for ``finetune=last finetune.head_grid=true``: ``lrs`` x ``weight_decays`` heads."""

    def __init__(self, *args, lrs: list[float], weight_decays: list[float], **kwargs):
        super().__init__(*args, **kwargs)
        if len(self.head) < 1 or not lrs or not weight_decays:
            raise StrategyError("finetune.head_grid needs a head and at least one lr and one weight decay.")
        self.settings = [
            {"lr": float(lr), "weight_decay": float(wd)} for lr, wd in itertools.product(lrs, weight_decays)
        ]
        head = self.net.get_submodule(self.head[-1])
        # Copies of the fresh head; the network's head stays out of the optimizer and receives the chosen one.
        self.grid = nn.ModuleList(copy.deepcopy(head) for _ in self.settings)
        self.register_buffer("grid_correct", torch.zeros(len(self.settings)), persistent=False)
        self.register_buffer("grid_loss", torch.zeros(len(self.settings)), persistent=False)
        self.grid_seen = 0
        self.best = 0
        self.grid_results: list[dict] = []

    def on_fit_start(self):
        if self.suffix is None:
            raise StrategyError(
                "finetune.head_grid trains on cached features, but the feature cache is off (augmentation on, "
                "cache_features=false or over cache_max_gb): set dataset.augment=false, finetune.cache_features=true."
            )
        super().on_fit_start()

    def _grid_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[settings, batch, classes] from cached features (the input of the head's first module)."""
        for name in self.head[:-1]:  # e.g. ViT's head_drop
            x = self.net.get_submodule(name)(x)
        return torch.stack([head(x) for head in self.grid])

    def _losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        smoothing = self.hparams.label_smoothing
        return torch.stack([F.cross_entropy(g, y, label_smoothing=smoothing) for g in logits])

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self._grid_logits(x)
        losses = self._losses(logits, y)
        self.images_seen += len(y)
        self.train_metrics.update(logits[self.best], y)
        self.train_loss.update(losses[self.best].detach(), weight=y.numel())
        return losses.sum()  # d(sum)/d(head g) is head g's own gradient

    def on_validation_epoch_start(self):
        self.grid_correct.zero_(), self.grid_loss.zero_()
        self.grid_seen = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self._grid_logits(x)
        self.grid_correct += (logits.argmax(-1) == y).sum(-1)
        self.grid_loss += self._losses(logits, y) * len(y)
        self.grid_seen += len(y)

    def on_validation_epoch_end(self):
        accs, losses = (self.grid_correct / self.grid_seen).tolist(), (self.grid_loss / self.grid_seen).tolist()
        self.best = max(range(len(accs)), key=lambda g: (accs[g], -g))
        self.net.get_submodule(self.head[-1]).load_state_dict(self.grid[self.best].state_dict())
        self.grid_results = [{**s, "val_acc": a, "val_loss": v} for s, a, v in zip(self.settings, accs, losses)]
        self.log_dict({"val/acc": accs[self.best], "val/loss": losses[self.best]})

    def configure_optimizers(self):
        hp = SimpleNamespace(**{**dict(self.hparams), "lr_head": 1.0})  # each head's lr is its own scale
        names = [(f"{g}.{n}", s) for g, s in enumerate(self.settings) for n, _ in self.grid[g].named_parameters()]
        optimizer, scheduler = warmup_cosine_optimizer(
            self.grid,
            [""],
            hp,
            self.trainer.estimated_stepping_batches,
            self.trainer.max_epochs,
            self.device,
            lr_scales={n: s["lr"] for n, s in names},
            weight_decays={n: s["weight_decay"] for n, s in names},
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
