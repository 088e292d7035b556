"""Model builders for the ``model`` config group: the network plus what training needs to know about it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torchvision
from torch import nn

from gnr650.models.weights import WeightsError, load_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class BuiltModel:
    """A network and its structure: ordered ``blocks`` (module names), the ``neck`` trained with any
    block, the classifier ``head``; ``mean``/``std`` when pretrained weights fix the normalisation."""

    name: str
    net: nn.Module
    blocks: list[str]
    head: list[str]
    neck: list[str] = field(default_factory=list)
    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: str | None = None


def find_local_weights(weights_dir: str | None, arch: str) -> Path | None:
    """``<weights_dir>/<arch>.<safetensors|pth|pt|bin>``, if present."""
    if not weights_dir:
        return None
    for suffix in WEIGHT_SUFFIXES:
        p = Path(weights_dir) / f"{arch}{suffix}"
        if p.is_file():
            return p
    return None


def build_resnet18(
    num_classes: int,
    name: str = "resnet18",
    stem: str = "imagenet",
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    weights_dir: str | None = None,
) -> BuiltModel:
    """torchvision ResNet-18; ``stem=cifar`` swaps in a 3x3 stride-1 first conv and drops the max-pool."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"model.stem must be 'imagenet' or 'cifar' (got {stem!r}).")
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    blocks = [f"layer{s}.{i}" for s in range(1, 5) for i in range(len(getattr(net, f"layer{s}")))]
    built = BuiltModel(name, net, blocks=blocks, head=["fc"], img_size=img_size)
    path = Path(weights) if weights else (find_local_weights(weights_dir, "resnet18") if pretrained else None)
    if path is not None:
        load_weights(net, path, head=["fc"])
    elif pretrained:
        try:
            state = torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict(progress=False)
        except Exception as e:
            raise WeightsError(
                f"Could not download ImageNet ResNet-18 weights ({e}). Offline? Set model.weights=<file> "
                "or model.pretrained=false."
            ) from e
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith("fc.") and not (stem == "cifar" and k.startswith("conv1."))
        }
        net.load_state_dict(state, strict=False)
    if path is not None or pretrained:
        built.mean, built.std, built.weights = IMAGENET_MEAN, IMAGENET_STD, str(path or "torchvision")
    return built


def build_vit(
    num_classes: int,
    arch: str,
    name: str | None = None,
    img_size: int = 224,
    pretrained: bool = True,
    weights: str | None = None,
    weights_dir: str | None = None,
    drop_path_rate: float = 0.0,
) -> BuiltModel:
    """A timm ViT at ``img_size``; pretrained from a local file (``weights``, or ``weights_dir/<arch>.*``) or
    the timm hub."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    kwargs = {"num_classes": num_classes, "img_size": img_size, "drop_path_rate": drop_path_rate}
    path = Path(weights) if weights else (find_local_weights(weights_dir, arch) if pretrained else None)
    if path is not None or not pretrained:
        net = timm.create_model(arch, pretrained=False, **kwargs)
        if path is not None:
            load_weights(net, path, head=["head"], adapt=checkpoint_filter_fn)
    else:
        try:
            net = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:
            raise WeightsError(
                f"Could not fetch pretrained '{arch}' weights from the timm hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). "
                f"Offline? Use local weights: model.weights=<file>, or GNR650_WEIGHTS_DIR=<folder with "
                f"{arch}.safetensors>; "
                "export HF_HUB_OFFLINE=1 to fail at once instead of after the hub's retries; "
                "ViT-Ti/16 weights can be used with model=vit_ti16 GNR650_WEIGHTS_DIR=<folder>; or "
                "model.pretrained=false."
            ) from e
        path = "timm-hub"
    cfg = net.pretrained_cfg
    built = BuiltModel(
        name or arch,
        net,
        blocks=[f"blocks.{i}" for i in range(len(net.blocks))],
        head=["head_drop", "head"],
        neck=["norm", "fc_norm"],
        img_size=img_size,
    )
    if pretrained or weights:
        built.mean, built.std, built.weights = tuple(cfg["mean"]), tuple(cfg["std"]), str(path)
    return built
