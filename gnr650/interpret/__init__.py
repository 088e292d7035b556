"""Interpretability: what a network has learned, as plain functions (weight norms, kernel and feature-map grids,
ViT attention and rollout, figures, the artefact index) and the Lightning callbacks that export them.

The callbacks are imported on first access (PEP 562), so that readers of the artefact index (the sweep
summary and its CLI) do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gnr650.interpret.callbacks import (
        ArtifactExport,
        AttentionExport,
        FeatureMapExport,
        KernelImageExport,
        KernelNormExport,
        ViTWeightNormExport,
    )
    from gnr650.interpret.change import ChangeAnalysis

__all__ = [
    "ArtifactExport",
    "AttentionExport",
    "ChangeAnalysis",
    "FeatureMapExport",
    "KernelImageExport",
    "KernelNormExport",
    "ViTWeightNormExport",
]


def __getattr__(name: str):
    if name in __all__:
        module = "gnr650.interpret.change" if name == "ChangeAnalysis" else "gnr650.interpret.callbacks"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
