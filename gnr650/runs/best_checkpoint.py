"""The best-on-validation checkpoint, its file named by the epoch as the console and the figures count it."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``{epoch}`` in ``filename`` counted from 1, the epochs completed by the
    weights (Lightning's counts from 0): ``epoch047-...`` holds the weights the epoch line "Epoch 47/60", the bar and
    the figures' "end (epoch 47)" name. The epoch stored inside the file stays Lightning's."""

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)
