"""Running and continuing runs: run and sweep directories, resume, skip_done, safe checkpoint reading,
atomic checkpoint writing, the resume checkpoint, RNG and sampler state, kept CSV history, results.json.

The names below are imported from their modules on first use (PEP 562's module ``__getattr__``): entry points import
``prepare_process`` from here before Hydra answers ``--help``, which needs neither Lightning nor torch."""

from __future__ import annotations

import importlib
from typing import Any

# Each exported name -> the module that defines it.
_EXPORTS = {
    "BestCheckpoint": "best_checkpoint",
    "LocalCheckpointIO": "checkpoint_io",
    "PreflightError": "preflight",
    "RunControl": "control",
    "RunInterrupted": "last_checkpoint",
    "check_launch": "preflight",
    "check_writable": "preflight",
    "completed_results": "resume",
    "evaluation_fields": "results",
    "prepare_process": "process",
    "provenance": "results",
    "run_control": "control",
    "versions": "results",
    "write_results": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
