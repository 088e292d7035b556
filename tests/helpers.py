"""Shared test helpers: compose configs like train.py does, run train.py as a user would, fake images, the
real-data switch."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EUROSAT_CLASSES = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]

# Fast, quiet defaults for every composed test config.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.accelerator=cpu"]


def make_cfg(overrides: list[str], out_dir: Path) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` and point every output at ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=QUIET + overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)  # as Hydra sets it for a job
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir)
        cfg.paths.output_dir = str(out_dir)
        if cfg.paths.cache_dir is None:
            cfg.paths.cache_dir = str(out_dir / "cache")
        del cfg.hydra
    return cfg


def train_py(args: list[str], root: Path, full_error: bool = True) -> subprocess.Popen:
    """Start ``train.py args`` as a user would, with its outputs under ``root``; stderr joins stdout.
    ``full_error``: ``HYDRA_FULL_ERROR=1``, every error with its traceback (else as a user sees them)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"paths.root_dir={root}"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "HYDRA_FULL_ERROR": "1"} if full_error else env,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a ``train_py`` process; it must succeed. Returns its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process at the start of training batch ``batch`` of ``epoch``; with ``marker``
    (a file it creates) only the first time, so that the same command resumes without a second signal."""

    def __init__(self, epoch: int, batch: int, signum: int, marker: str | None = None):
        self.epoch, self.batch, self.signum = epoch, batch, signum
        self.marker = Path(marker) if marker else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.marker:
            if self.marker.exists():
                return
            self.marker.touch()
        os.kill(os.getpid(), self.signum)


def signal_at(epoch: int, batch: int, signum: int = signal.SIGINT, marker: Path | None = None) -> list[str]:
    """The overrides that add ``SignalAt`` to a run: ``signum`` at training batch ``batch`` of ``epoch``."""
    return [
        f"+callbacks.signal._target_={SignalAt.__module__}.SignalAt",
        f"+callbacks.signal.epoch={epoch}",
        f"+callbacks.signal.batch={batch}",
        f"+callbacks.signal.signum={int(signum)}",
    ] + ([f"+callbacks.signal.marker={marker}"] if marker else [])


def kill_at_first(proc: subprocess.Popen, directory: Path, pattern: str, timeout: float = 240) -> Path:
    """SIGKILL a ``train_py`` process as soon as a file matching ``directory.glob(pattern)`` exists (e.g. its first
    ``last.ckpt``); returns that file. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not (found := list(directory.glob(pattern))):
        assert proc.poll() is None and time.monotonic() < deadline, f"the run ended before {pattern} appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return found[0]


def csv_rows(directory: Path) -> list[dict[str, str]]:
    """The rows of ``directory/metrics.csv`` (a CSVLogger's), without their empty cells."""
    with (directory / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def no_hooks(net: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks) for m in net.modules())


class RunsCodeWhenUnpickled:
    """Unpickling this calls ``os.system``: what a safe loader must refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def write_image(path: Path, rng: np.random.Generator, size: int = 32, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def tiny_overrides(dataset: str, data_root: Path) -> list[str]:
    """Overrides that make ``dataset`` with any model and strategy run in about a second."""
    per_dataset = {
        "synthetic": [],
        "cifar10-subset": ["dataset.per_class=2", "dataset.val_per_class=2"],
        "eurosat": [],
        "imagefolder": [f"dataset.root={data_root / 'folder'}"],
    }[dataset]
    return [
        f"dataset={dataset}",
        f"paths.data_dir={data_root}",
        "model.img_size=32",
        "model.pretrained=false",
        "trainer.max_epochs=1",
        "batch_size=8",
        "eval_batch_size=64",
        "logger=none",
        "callbacks=none",
    ] + per_dataset


def real_data_dir() -> Path | None:
    d = os.environ.get("GNR650_DATA_DIR")
    return Path(d) if d and Path(d).is_dir() else None


def real_weights() -> Path | None:
    d = os.environ.get("GNR650_WEIGHTS_DIR")
    p = Path(d) / "vit_tiny_patch16_224.safetensors" if d else None
    return p if p and p.is_file() else None


def optimizer_settings(**changes) -> SimpleNamespace:
    """An ``optimizer`` config as ``warmup_cosine_optimizer`` reads it: AdamW, configs/train.yaml's values, ``changes``
    on top."""
    base = {
        "algorithm": "adamw",
        "momentum": 0.9,
        "lr_head": 1e-3,
        "lr_backbone": 1e-4,
        "weight_decay": 0.05,
        "betas": (0.9, 0.999),
        "warmup_epochs": 1.0,
        "min_lr_ratio": 0.0,
    }
    return SimpleNamespace(**(base | changes))
