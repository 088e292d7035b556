"""Weighted k-NN on frozen features (DINO, Caron et al. 2021): no training, the train split is the classifier.

``KNNClassifier`` replaces the head: a query's score for a class is the share of ``exp(cos / T)`` that
the class holds among the query's k nearest train features (cosine similarity), and its logits are the
log of those shares, so the usual evaluation (accuracy, per class, confusion matrix, NLL loss) applies
unchanged. ``KNNBank`` fills the bank at test start, on the training device, from the network with its
head removed (ViT: the CLS/pooled features; ResNet: the pooled features). The train split's own
accuracy counts each image as its own nearest neighbour, as any memorising classifier would.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from gnr650.finetune.strategies import StrategyError, evaluating


class KNNClassifier(nn.Module):
    """Cosine-similarity, temperature-weighted k-NN vote over a feature bank."""

    def __init__(self, num_classes: int, k: int = 20, temperature: float = 0.07):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise StrategyError(f"finetune.knn.k must be a positive integer (got {k!r}); DINO uses 20.")
        if not temperature > 0:
            raise StrategyError(f"finetune.knn.temperature must be positive (got {temperature!r}); DINO uses 0.07.")
        self.num_classes, self.k, self.temperature = num_classes, k, float(temperature)
        self.register_buffer("bank", torch.empty(0), persistent=False)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=False)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> KNNClassifier:
        if len(features) < self.k:
            raise StrategyError(f"finetune.knn.k={self.k} is larger than the {len(features)} train features.")
        with torch.inference_mode(False):  # filled during testing; later gradients (Grad-CAM) may flow through it
            self.bank = F.normalize(features.float(), dim=1)  # a new, normal tensor outside inference mode
            self.labels = labels.to(features.device).clone()  # .to() may return the inference tensor itself
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sims, idx = (F.normalize(x.float(), dim=1) @ self.bank.T).topk(self.k, dim=1)
        weights = (sims / self.temperature).exp()
        votes = torch.zeros(len(x), self.num_classes, device=x.device).scatter_add_(1, self.labels[idx], weights)
        return (votes / votes.sum(dim=1, keepdim=True)).clamp_min(1e-12).log()


class KNNBank(pl.Callback):
    """At test start: the head-less network's features of the train split become the k-NN bank and head.

    ``k`` is checked against ``train_size`` here, before any work."""

    def __init__(self, head: str, classifier: KNNClassifier, train_size: int):
        if classifier.k > train_size:
            raise StrategyError(
                f"finetune.knn.k={classifier.k} is larger than the train split ({train_size} images); "
                f"use finetune.knn.k={train_size} or less."
            )
        self.head, self.classifier = head, classifier

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net, train = pl_module.net, trainer.datamodule.split("train")
        parent, _, child = self.head.rpartition(".")
        owner = net.get_submodule(parent)
        setattr(owner, child, nn.Identity())
        batch = trainer.datamodule.eval_batch_size
        with evaluating(net):
            features = torch.cat(
                [
                    net(pl_module.preprocess(train.images[i : i + batch].to(pl_module.device)))
                    for i in range(0, len(train), batch)
                ]
            )
        setattr(owner, child, self.classifier.fit(features, train.labels.to(pl_module.device)).to(pl_module.device))
