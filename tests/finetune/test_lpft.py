"""LP-FT (finetune=lpft): a linear probe with the backbone untouched, then everything fine-tunes, the backbone's
learning rate warming up from the first fine-tuning step; bad probe lengths refused before data are read."""

import pytest
import pytorch_lightning as pl
import torch

from gnr650.finetune import StrategyError
from gnr650.finetune.strategies import check_lp_epochs
from gnr650.train import build
from tests.helpers import make_cfg

SMOKE = ["debug=smoke", "model=vit_ti16", "finetune=lpft", "logger=none", "callbacks=none"]


class Recorder(pl.Callback):
    """Per step: the learning rate of each parameter group and which parts are in train mode; per epoch: the weights
    and the parameters the optimizer has stepped (those it holds a state for)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.stepped: list[set[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        net = pl_module.net
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "lr": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
                "modes": (net.patch_embed.training, net.blocks.training, net.norm.training, net.head.training),
            }
        )

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})
        state = trainer.optimizers[0].state
        self.stepped.append({n for n, p in pl_module.net.named_parameters() if state.get(p)})


@pytest.fixture(scope="module")
def lpft_fit(tmp_path_factory):
    """Two epochs of the smoke ViT-Ti (4 steps each): epoch 0 probes, epoch 1 fine-tunes."""
    cfg = make_cfg(SMOKE + ["trainer.max_epochs=2"], tmp_path_factory.mktemp("lpft"))
    pl.seed_everything(0)
    dm, built, module = build(cfg)
    start = {k: v.detach().clone() for k, v in built.net.state_dict().items()}
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=dm)
    return cfg, module, trainer, start, recorder


def test_the_probe_leaves_the_backbone_bit_identical_then_everything_trains(lpft_fit):
    """AdamW's weight decay included: the backbone is in the optimizer from the start, but without gradients
    during the probe it is not stepped at all (no moments gathered either: its first step is a first step)."""
    _, module, trainer, start, recorder = lpft_fit
    head = {k for k in start if k.startswith("head.")}
    assert recorder.stepped == [head, set(start)]
    after_probe, after_fine_tuning = recorder.weights
    assert all(torch.equal(after_probe[k], start[k]) for k in start if k not in head)
    assert all(not torch.equal(after_probe[k], start[k]) for k in head)
    assert all(not torch.equal(after_fine_tuning[k], after_probe[k]) for k in start)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in module.net.parameters()}


def test_the_backbone_is_frozen_in_eval_mode_during_the_probe(lpft_fit):
    _, _, _, _, recorder = lpft_fit
    modes = [(s["epoch"], s["modes"]) for s in recorder.steps]
    # patch_embed, blocks, norm, head
    assert modes == [(0, (False, False, False, True))] * 4 + [(1, (True, True, True, True))] * 4


def test_the_backbone_lr_is_zero_in_the_probe_then_warms_up_from_the_first_fine_tuning_step(lpft_fit):
    """optimizer.warmup_epochs=1: the backbone warms up over the fine-tuning's first 4 steps, as a run starting there
    would; the head's schedule spans the whole run, so it has warmed up by then and starts its cosine."""
    cfg, _, _, _, recorder = lpft_fit
    lr_backbone, lr_head = cfg.optimizer.lr_backbone, cfg.optimizer.lr_head
    backbone = [s["lr"]["backbone"] for s in recorder.steps]
    assert all(s["lr"]["backbone_no_decay"] == lr for s, lr in zip(recorder.steps, backbone))
    assert backbone == pytest.approx([0.0] * 4 + [lr_backbone * k / 5 for k in range(1, 5)], rel=1e-12, abs=0)
    head = [s["lr"]["head"] for s in recorder.steps]
    assert head[:4] == pytest.approx([lr_head * k / 5 for k in range(1, 5)], rel=1e-12)
    assert head[4] == pytest.approx(lr_head, rel=1e-12) and head[7] < head[4]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["finetune.lp_epochs=0", "trainer.max_epochs=3"], r"lp_epochs must be a number of epochs >= 1 \(got 0\)"),
        (
            ["trainer.max_epochs=1"],
            r"lp_epochs=1 leaves no epoch to fine-tune in trainer.max_epochs=1: set trainer.max_epochs above 1\.$",
        ),
        (
            ["finetune.lp_epochs=3", "trainer.max_epochs=3"],
            "lp_epochs=3 leaves no epoch.*above 3 or lower finetune.lp_epochs",
        ),
        (["trainer.max_epochs=-1"], "leaves no epoch to fine-tune in trainer.max_epochs=-1"),
    ],
)
def test_bad_lp_epochs_are_refused_before_data_are_read(overrides, message, tmp_path):
    """An image folder that does not exist: reading data first would fail on it instead."""
    data = ["dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}"]
    with pytest.raises(StrategyError, match=message):
        build(make_cfg(SMOKE + data + overrides, tmp_path))
    with pytest.raises(Exception, match="missing") as error:  # the same folder with a valid probe length
        build(make_cfg(SMOKE + data + ["trainer.max_epochs=2"], tmp_path))
    assert not isinstance(error.value, StrategyError)


@pytest.mark.parametrize("lp_epochs", [True, 1.0, "1"])
def test_lp_epochs_must_be_an_integer(lp_epochs):
    with pytest.raises(StrategyError, match=f"lp_epochs must be a number of epochs >= 1 \\(got {lp_epochs!r}\\)"):
        check_lp_epochs(lp_epochs, 5)
