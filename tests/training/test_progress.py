"""The console: the running epoch's bar counts epochs as the epoch lines and the figures' labels do (from 1)."""

import logging

import pytest
import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import BoringModel

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
        callbacks=[bar(), EpochLog()],
    )
    with caplog.at_level(logging.INFO, logger="gnr650"):
        trainer.fit(BoringModel())
    shown = capsys.readouterr().out.strip().split("\r")[-1]  # the bar as it is left: its last redraw
    assert shown.startswith("Epoch 2/2"), shown
    # BoringModel logs no train/ or val/ metrics, and validation is off: the lines carry the epoch and its time.
    lines = [r.getMessage() for r in caplog.records if r.name == "gnr650.training.progress"]
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
