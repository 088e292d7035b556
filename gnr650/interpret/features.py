"""Feature maps (torchvision's ``create_feature_extractor``) and the choice of the image to show them on.

The extractor is an FX-traced copy of the graph that shares the net's modules: nothing is attached to the net
(no hooks); it runs in eval mode under ``no_grad`` and every module's train/eval flag is put back afterwards, so
extraction can run mid-training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.utils import make_grid

from gnr650.data.images import decode_image
from gnr650.finetune.strategies import evaluating

log = logging.getLogger(__name__)


def default_stages(net: nn.Module) -> dict[str, str]:
    """Label -> module name of the ResNet stages: the stem (output of ``maxpool``, an Identity with
    the CIFAR stem) and ``layer1``..``layer4``."""
    children = dict(net.named_children())
    stages = {"stem": "maxpool"} if "maxpool" in children else {}
    stages.update({name: name for name in children if name.startswith("layer")})
    if not stages:
        raise ValueError(f"no ResNet stages in {type(net).__name__}; pass the stages explicitly")
    return stages


def feature_maps(net: nn.Module, x: torch.Tensor, stages: dict[str, str]) -> dict[str, torch.Tensor]:
    """Outputs of the named modules (label -> module name) for input ``x`` [N, C, H, W] (already preprocessed).

    The net must be traceable by ``torch.fx`` (torchvision's ResNets are; an Identity module, as ``maxpool`` in
    the CIFAR stem, is a leaf and keeps its name).
    """
    with evaluating(net):  # the extractor is traced in the net's mode, and its modules are the net's own
        extractor = create_feature_extractor(net, return_nodes={name: label for label, name in stages.items()})
        out = extractor(x)
    return {label: out[label].float().cpu() for label in stages}


def spatial_maps(
    maps: dict[str, torch.Tensor], min_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Split feature maps [..., H, W] into those at least ``min_size`` in height and width (worth drawing) and
    the sizes of the rest (e.g. 2x2 and 1x1 at layer3/layer4 of the ImageNet stem on 32x32 inputs)."""
    kept = {label: m for label, m in maps.items() if min(m.shape[-2:]) >= min_size}
    left_out = {label: tuple(m.shape[-2:]) for label, m in maps.items() if label not in kept}
    return kept, left_out


def channel_grid(fmap: torch.Tensor, num_channels: int = 16) -> torch.Tensor:
    """First ``num_channels`` channels of one feature map [C, H, W] tiled as [H', W'] (NaN padding).

    One rule for every channel: min-max scaled on its own to [0, 1] (0 = its minimum, 1 = its maximum), so weak
    channels stay visible. A constant channel (e.g. all zero after a ReLU) has no range: it is set to -1, below
    the scale, for the figure to draw in its own colour.
    """
    maps = fmap[:num_channels, None].float()
    lo, hi = maps.amin(dim=(1, 2, 3), keepdim=True), maps.amax(dim=(1, 2, 3), keepdim=True)
    scaled = torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny), -1.0)
    nrow = max(1, int(round(maps.shape[0] ** 0.5)))
    return make_grid(scaled, nrow=nrow, padding=1, pad_value=float("nan"))[0]


def load_image(path: str | Path) -> torch.Tensor:
    """Any image file as a uint8 RGB tensor [3, H, W], decoded as the data sets decode theirs."""
    return torch.tensor(decode_image(path)).permute(2, 0, 1).contiguous()  # a copy: the decoded array is read-only


def pick_image(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    image_class: str | None = None,
    image_path: str | None = None,
) -> tuple[torch.Tensor, str]:
    """The image to visualise and a caption: ``image_path`` if given, else the first image of class
    ``image_class`` (by name). A class this dataset lacks falls back to the first image, with a
    warning, so a study preset still runs on another dataset (the caption names the real class)."""
    if image_path:
        return load_image(image_path), Path(image_path).name
    idx = 0
    if image_class is not None:
        hits = (labels == class_names.index(image_class)).nonzero().flatten() if image_class in class_names else []
        if len(hits):
            idx = int(hits[0])
        else:
            log.warning("no %r image here (classes: %s); using the first image", image_class, class_names)
    return images[idx], f"{class_names[int(labels[idx])]} #{idx}"
