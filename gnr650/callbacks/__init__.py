"""Lightning callbacks enabled from the ``callbacks`` config group."""

from gnr650.callbacks.exports import (ArtifactExport, AttentionExport, FeatureMapExport, KernelImageExport,
                                      KernelNormExport, ViTWeightNormExport)

__all__ = ["ArtifactExport", "AttentionExport", "FeatureMapExport", "KernelImageExport", "KernelNormExport",
           "ViTWeightNormExport"]
