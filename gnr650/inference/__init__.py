"""After training: a finished run's network read back from its directory, to predict, evaluate on other data
and export (safetensors for timm, ONNX)."""

from gnr650.inference.trained_run import RunDirError, TrainedRun, load_run

__all__ = ["RunDirError", "TrainedRun", "load_run"]
