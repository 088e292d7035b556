"""Does it hold up: the shift suite, calibration and WiSE-FT (``Robustness``, configs/callbacks/robustness.yaml)."""

from gnr650.robustness.callback import Robustness

__all__ = ["Robustness"]
