"""Interpretability exports as plain functions (no Lightning): weight norms, kernel and feature-map
grids, ViT attention and rollout, their figures, and the run's artefact index.

The Lightning callbacks in ``gnr650.callbacks`` decide when these run and where files go.
"""

from gnr650.interpret.attention import (attention_layers, attention_rollout, cls_attention, extract_attention,
                                        images_per_class, patch_grid, patch_maps, save_attention_npz)
from gnr650.interpret.features import (capture_outputs, channel_grid, default_stages, evaluating, feature_maps,
                                       load_image, pick_image)
from gnr650.interpret.index import append_to_index, entry, read_index
from gnr650.interpret.kernels import (conv_layers, default_kernel_layers, kernel_grid, norm_summary, unit_norms,
                                      vit_linear_layers, write_norms_csv)

__all__ = [
    "append_to_index", "attention_layers", "attention_rollout", "capture_outputs", "channel_grid", "cls_attention",
    "conv_layers", "default_kernel_layers", "default_stages", "entry", "evaluating", "extract_attention",
    "feature_maps", "images_per_class", "kernel_grid", "load_image", "norm_summary", "patch_grid", "patch_maps",
    "pick_image", "read_index", "save_attention_npz", "unit_norms", "vit_linear_layers", "write_norms_csv",
]
