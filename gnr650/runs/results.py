"""results.json: what a run reports, with the versions it ran with; never lost when the file cannot be written."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
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
        "gnr650": version("gnr650"),
    }


CHECKOUT = Path(__file__).resolve().parents[2]  # the directory holding the gnr650 package (a git checkout or not)


def provenance(repo: Path = CHECKOUT) -> dict[str, Any]:
    """Which code ran where, for the report's header: the git commit of ``repo`` (the checkout gnr650 runs from)
    and whether tracked files had uncommitted changes (both None outside a git checkout), and the machine."""
    import torch

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(terse=True),
        },
    }


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def evaluation_fields(final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metrics, per-class accuracies and confusion matrices of ``ClassificationModule.final_results``, as
    results.json (and eval_results.json) hold them; the splits evaluated, in ``SPLITS`` order."""
    splits = [s for s in SPLITS if s in final]
    return {
        "metrics": {f"{s}/{k}": final[s][k] for s in splits for k in ("acc", "acc_macro", "loss")},
        "per_class": {s: final[s]["per_class"] for s in splits},
        "confusion_matrix": {s: final[s]["confusion_matrix"] for s in splits},
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
