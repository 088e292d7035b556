"""The LightningModule as train.py builds it: its optimizer's learning rates, and what its final evaluation
measures (each split's own batches, unaugmented, the configured loss) against a plain evaluation loop."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from safetensors.torch import save_file

from gnr650.data import SPLITS
from gnr650.finetune.strategies import is_under
from gnr650.models import build_resnet18
from gnr650.models.factory import IMAGENET_MEAN, IMAGENET_STD
from gnr650.train import build, train
from tests.helpers import csv_rows, make_cfg

SMOKE = ["debug=smoke", "logger=none", "callbacks=none"]


@pytest.mark.parametrize("model,head", [("vit_ti16", "head"), ("resnet18", "fc")])
def test_head_parameters_learn_at_lr_head_and_the_other_trainable_ones_at_lr_backbone(model, head, tmp_path):
    cfg = make_cfg(
        SMOKE + [f"model={model}", "finetune=top4", "optimizer.lr_head=0.5", "optimizer.lr_backbone=0.002"], tmp_path
    )
    dm, _, module = build(cfg)
    trainer = _fit(module, dm, max_steps=1)
    lr_of = {id(p): g["initial_lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    names = dict(module.net.named_parameters())
    assert len(lr_of) == sum(len(g["params"]) for g in trainer.optimizers[0].param_groups)  # no parameter twice
    assert {n for n, p in names.items() if id(p) in lr_of} == {n for n, p in names.items() if p.requires_grad}
    for name, p in names.items():
        if p.requires_grad:
            assert lr_of[id(p)] == (0.5 if is_under(name, [head]) else 0.002), name
    assert 0 < sum(lr == 0.5 for lr in lr_of.values()) < sum(lr == 0.002 for lr in lr_of.values())


def _fit(module, dm, callbacks=(), logger=False, **limits) -> pl.Trainer:
    """A bare trainer: no validation, checkpoints or progress bar."""
    trainer = pl.Trainer(
        limit_val_batches=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


class StepLog(pl.Callback):
    """Every training step's learning rates (as the step uses them), epoch, loss and batch size."""

    def __init__(self):
        self.rates: list[dict[str, float]] = []
        self.losses: list[tuple[int, float, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((trainer.current_epoch, float(outputs["loss"]), len(batch[1])))


def test_learning_rates_follow_the_schedule_at_every_step_and_each_epoch_logs_its_own_mean_loss(tmp_path):
    cfg = make_cfg(
        SMOKE
        + ["model=resnet18", "finetune=top4", "optimizer.lr_head=0.3", "optimizer.lr_backbone=0.01"]
        + ["optimizer.warmup_epochs=1", "optimizer.min_lr_ratio=0.1", "dataset.per_class=8"],
        tmp_path,
    )
    dm, _, module = build(cfg)
    log = StepLog()
    _fit(module, dm, [log], logger=CSVLogger(tmp_path, name="", version=""), max_epochs=3)
    steps, warmup = 6, 2  # 32 images in batches of 16, 3 epochs
    factors = [
        (s + 1) / (warmup + 1)
        if s < warmup
        else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        for s in range(steps)
    ]
    assert [r["head"] for r in log.rates] == pytest.approx([0.3 * f for f in factors])
    assert [r["backbone_no_decay"] for r in log.rates] == pytest.approx([0.01 * f for f in factors])
    logged = [float(row["train/loss"]) for row in csv_rows(tmp_path) if "train/loss" in row]
    means = [
        sum(loss * n for e, loss, n in log.losses if e == epoch) / sum(n for e, _, n in log.losses if e == epoch)
        for epoch in range(3)
    ]
    assert logged == pytest.approx(means, rel=1e-5)


@pytest.mark.parametrize("pretrained", [False, True])
def test_inputs_are_normalised_with_the_weights_statistics_or_else_the_training_splits(pretrained, tmp_path):
    overrides = SMOKE + ["model=resnet18"]
    if pretrained:
        save_file(build_resnet18(4).net.state_dict(), str(tmp_path / "resnet18.safetensors"))
        overrides.append(f"model.weights={tmp_path / 'resnet18.safetensors'}")
    dm, _, module = build(make_cfg(overrides, tmp_path))
    if pretrained:
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    else:
        pixels = dm.split("train").images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        mean, std = pixels.mean(axis=1), pixels.std(axis=1, ddof=1)
    np.testing.assert_allclose(module.preprocess.mean.flatten().numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(module.preprocess.std.flatten().numpy(), std, rtol=1e-5)


def test_final_metrics_are_each_splits_own_unaugmented_evaluation(tmp_path):
    """Splits of different sizes and contents; training augments, label smoothing on: every final metric (and the
    logged validation loss) equals a plain loop over that split with the same weights, without augmentation."""
    smoothing = 0.2
    cfg = make_cfg(
        [
            "debug=smoke",
            "model=resnet18",
            "finetune=full",
            "trainer.max_epochs=1",
            "dataset.augment=true",
            "dataset.val_per_class=3",
            "dataset.test_per_class=5",
            f"optimizer.label_smoothing={smoothing}",
            "logger=csv",
            "callbacks=default",
        ],
        tmp_path,
    )
    results = train(cfg)
    dm, _, module = build(cfg)
    weights = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(weights)  # one epoch: the weights the validation and the final evaluation saw
    module.eval()
    (logged_val_loss,) = [float(row["val/loss"]) for row in csv_rows(tmp_path) if "val/loss" in row]
    for split in SPLITS:
        data = dm.split(split)
        with torch.no_grad():
            logits = module.net(module.preprocess(data.images, augment=False))
        log_p = F.log_softmax(logits, dim=1)
        nll = -log_p.gather(1, data.labels[:, None]).squeeze(1)
        loss = ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)).mean()  # label smoothing, written out
        predicted = logits.argmax(dim=1)
        assert sum(map(sum, results["confusion_matrix"][split])) == len(data), split
        assert results["metrics"][f"{split}/acc"] == pytest.approx((predicted == data.labels).float().mean().item())
        assert results["metrics"][f"{split}/loss"] == pytest.approx(loss.item(), rel=1e-5), split
        if split == "val":
            assert logged_val_loss == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("strategy,new", [("lora", ".lora_"), ("vpt", "blocks.prompts")])
def test_adapters_and_prompts_learn_at_the_head_rate(strategy, new, tmp_path):
    """They start from scratch, as the head does: every trained tensor is at lr_head (no backbone group left)."""
    overrides = ["model=vit_ti16", f"finetune={strategy}", "optimizer.lr_head=0.3", "optimizer.lr_backbone=0.01"]
    dm, _, module = build(make_cfg(SMOKE + overrides + ["finetune.cache_features=false"], tmp_path))
    trainer = _fit(module, dm, [], max_epochs=1)
    names = {id(p): n for n, p in module.net.named_parameters()}
    rates = {names[id(p)]: g["initial_lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert any(new in n for n in rates) and set(rates.values()) == {0.3}
