"""The console progress bar: one line left per epoch (rich's when installed, else tqdm's); validation and test
bars are transient."""

from __future__ import annotations

import importlib.util

from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar


def epoch_progress_bar() -> ProgressBar:
    """Lightning's bars with ``leave=True``: each finished epoch stays as one line with its metrics."""
    if importlib.util.find_spec("rich") is not None:
        return RichProgressBar(leave=True)
    return TQDMProgressBar(leave=True)
