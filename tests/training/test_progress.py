"""The console: the running epoch's bar counts epochs as the epoch lines and the figures' labels do (from 1); the
final evaluation's bar names the split it evaluates."""

import logging

import pytest
import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import BoringModel

from gnr650.data import SPLITS
from gnr650.training.progress import EpochLog, _RichBar, _TQDMBar


@pytest.mark.parametrize("bar", [_RichBar, _TQDMBar])
def test_the_bar_and_the_epoch_lines_count_epochs_from_one(bar, capsys, caplog):
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar(SPLITS), EpochLog()],
    )
    with caplog.at_level(logging.INFO, logger="gnr650"):
        trainer.fit(BoringModel())
    shown = capsys.readouterr().out.strip().split("\r")[-1]  # the bar as it is left: its last redraw
    assert shown.startswith("Epoch 2/2"), shown
    # BoringModel logs no train/ or val/ metrics, and validation is off: the lines carry the epoch and its time.
    lines = [r.getMessage() for r in caplog.records if r.name == "gnr650.training.progress"]
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]


class _ThreeEvaluations(BoringModel):
    """The final evaluation's shape: one test dataloader per split."""

    def test_dataloader(self):
        loader = super().test_dataloader()
        return [loader] * len(SPLITS)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return super().test_step(batch, batch_idx)


class _BarLabels(pl.Callback):
    """The test bar's label at every test batch (rich: its task's description; tqdm: its ``desc``)."""

    def __init__(self, bar):
        self.bar, self.seen = bar, []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        shown = self.bar.test_progress_bar
        self.seen.append(shown.description if isinstance(self.bar, _RichBar) else shown.desc.removesuffix(": "))


@pytest.mark.parametrize("bar", [_RichBar, _TQDMBar])
def test_the_final_evaluation_names_each_split_on_the_bar(bar):
    labels = _BarLabels(bar(SPLITS))
    trainer = pl.Trainer(limit_test_batches=2, logger=False, enable_model_summary=False, callbacks=[labels.bar, labels])
    trainer.test(_ThreeEvaluations(), verbose=False)
    assert labels.seen == [f"Evaluating {split}" for split in SPLITS for _ in range(2)]
