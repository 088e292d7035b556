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

__all__ = [
    "ArtifactExport",
    "AttentionExport",
    "FeatureMapExport",
    "KernelImageExport",
    "KernelNormExport",
    "ViTWeightNormExport",
]
