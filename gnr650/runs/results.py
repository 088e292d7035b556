"""results.json: what a run reports, with the versions it ran with; never lost when the file cannot be written."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

from gnr650.data import SPLITS
from gnr650.files import write_json

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import hydra
    import pytorch_lightning as pl
    import torch
    import torchmetrics
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": version("timm"),  # not imported: a ResNet-18 run does not load it
        "pytorch_lightning": pl.__version__,
        "torchmetrics": torchmetrics.__version__,
        "hydra": hydra.__version__,
    }


def evaluation_fields(final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metrics, per-class accuracies and confusion matrices of ``ClassificationModule.final_results``, as
    results.json (and eval_results.json) hold them."""
    return {
        "metrics": {f"{s}/{k}": final[s][k] for s in SPLITS for k in ("acc", "acc_macro", "loss")},
        "per_class": {s: final[s]["per_class"] for s in SPLITS},
        "confusion_matrix": {s: final[s]["confusion_matrix"] for s in SPLITS},
    }


def write_results(path: Path, results: dict[str, Any]) -> None:
    """An unwritable results.json must not lose the results: they go to the log, and a completed run fails."""
    try:
        write_json(path, results)
    except OSError as e:
        log.error(
            "Could not write %s (%s). The results: %s",
            path,
            e,
            json.dumps({k: results.get(k) for k in ("status", "error", "metrics", "checkpoint")}, default=str),
        )
        if results["status"] == "completed":
            raise
