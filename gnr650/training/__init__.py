"""Training: the LightningModule, its optimizer and schedule, device-side metrics and preprocessing, the
divergence guard, the console (progress bar, epoch lines) and the did-not-learn check."""

from gnr650.training.device import on_gpu, use_channels_last
from gnr650.training.module import ClassificationModule
from gnr650.training.preprocess import DevicePreprocess
from gnr650.training.progress import epoch_progress_bar

__all__ = ["ClassificationModule", "DevicePreprocess", "epoch_progress_bar", "on_gpu", "use_channels_last"]
