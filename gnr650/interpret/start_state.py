"""The start of a run, saved once: what each export needs of phase ``start`` after a resume.

At the first fit start every export writes its start files and then ``<run_dir>/start_state/<Export>.pt``
(atomically): the start's epoch plus what it keeps in memory until the end. For ``ChangeAnalysis`` that is W0
(every parameter in its own dtype, every buffer) and the start probe pass's features (so the end's drift, CKA,
probes and attention statistics compare against exactly the first process's start, nothing is recomputed);
for the norm exports the start norms (their plot); for the kernel images the start's shown kernels (the end - start
view); for the feature maps nothing but the epoch.

A process that continues the same run (``resume=true``, ``skip_done=true`` on an unfinished sweep job, or
``ckpt_path=`` one of the run's own checkpoints) reads that file instead of exporting the start again, so no
start artefact or index entry is rewritten from the resumed weights. ``ckpt_path=`` another run's checkpoint
starts a new run: its start is that checkpoint's weights as loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from gnr650.files import atomic_write, refusing_pickled_code
from gnr650.runs.checkpoints import CheckpointError

START_STATE_DIR = "start_state"


def start_state_path(run_dir: str | Path, export: str) -> Path:
    """Where the export named ``export`` (its class name) keeps the run's start."""
    return Path(run_dir) / START_STATE_DIR / f"{export}.pt"


def continues_run(trainer: pl.Trainer, run_dir: str | Path) -> bool:
    """Whether this fit continues the run in ``run_dir``: it loads a checkpoint saved inside that directory
    (its own ``last.ckpt`` on resume, or one of its checkpoints given as ``ckpt_path``)."""
    if trainer.state.fn != TrainerFn.FITTING or not trainer.ckpt_path:
        return False
    return Path(run_dir).resolve() in Path(trainer.ckpt_path).resolve().parents


def save_start_state(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_start_state(path: Path) -> dict | None:
    """The saved start, or None when there is none (a run begun before start states were saved)."""
    if not path.is_file():
        return None
    with refusing_pickled_code(path, CheckpointError, "start state", "It holds only tensors and plain values."):
        return torch.load(path, map_location="cpu", weights_only=True)
