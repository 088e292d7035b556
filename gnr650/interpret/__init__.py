"""Interpretability: what a network has learned, as plain functions (weight norms, kernel and feature-map grids,
ViT attention and rollout, figures, the artefact index) and the Lightning callbacks that export them."""

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
