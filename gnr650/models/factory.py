"""Model builders for the ``model`` config group: the network plus what training needs to know about it."""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torchvision
from torch import nn

from gnr650.models.weights import WeightsError, first_line, hub_offline, hub_reachable, load_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class BuiltModel:
    """A network and its structure: ordered ``blocks`` (module names), the ``stem`` before the first block
    (module or parameter names: ``patch_embed``, ``cls_token``), the ``neck`` trained with any block, the
    classifier ``head``; ``mean``/``std`` when pretrained weights fix the normalisation."""

    name: str
    net: nn.Module
    blocks: list[str]
    head: list[str]
    neck: list[str] = field(default_factory=list)
    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: str | None = None
    # Modules that train with a block beside it (timm groups a stage's downsampling layer with its first block).
    block_parts: dict[str, list[str]] = field(default_factory=dict)
    stem: list[str] = field(default_factory=list)

    def block_modules(self, blocks: list[str]) -> list[str]:
        """The given blocks with the modules that train with them."""
        return [m for b in blocks for m in (*self.block_parts.get(b, ()), b)]


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
    built = BuiltModel(name, net, blocks=blocks, head=["fc"], img_size=img_size, stem=["conv1", "bn1"])
    path = Path(weights) if weights else (find_local_weights(weights_dir, "resnet18") if pretrained else None)
    if path is not None:
        load_weights(net, path, head=["fc"])
    elif pretrained:
        try:
            state = torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict(progress=False)
        except Exception as e:
            raise WeightsError(
                f"Could not download ImageNet ResNet-18 weights ({first_line(e)}). Set "
                f"GNR650_WEIGHTS_DIR=<folder with resnet18.pth>, model.weights=<file>, or model.pretrained=false."
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


def _create_timm(
    arch: str,
    num_classes: int,
    kwargs: dict,
    pretrained: bool,
    weights: str | None,
    weights_dir: str | None,
) -> tuple[nn.Module, str | None]:
    """``timm.create_model(arch)`` with pretrained weights from a local file (``weights``, or
    ``weights_dir/<arch>.*``; all but the classifier) or the timm hub; returns the network and where its
    weights came from."""
    import timm  # here, not at the top: ResNet-18 runs need no timm (~0.2 s and ~25 MB at start-up)

    kwargs = {"num_classes": num_classes, **kwargs}
    path = Path(weights) if weights else (find_local_weights(weights_dir, arch) if pretrained else None)
    if path is not None or not pretrained:
        net = timm.create_model(arch, pretrained=False, **kwargs)
        if path is not None:
            # timm's own conversion for the architecture (e.g. ViT position-embedding resampling), when it has one.
            adapt = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
            load_weights(net, path, head=[classifier_name(net)], adapt=adapt)
        return net, None if path is None else str(path)
    # Not reachable: the hub's local cache alone, failing at once rather than after a minute of retries.
    reachable = hub_reachable()
    try:
        with nullcontext() if reachable else hub_offline():
            return timm.create_model(arch, pretrained=True, **kwargs), "timm-hub"
    except Exception as e:
        from huggingface_hub import constants

        local = f"none in {weights_dir}" if weights_dir else "GNR650_WEIGHTS_DIR is not set"
        if reachable:
            hub = f"the timm hub failed ({first_line(e)})"
        else:
            why = "is off (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else "is not reachable"
            hub = f"the timm hub {why} and its local cache lacks them"
        other = "" if arch == "vit_tiny_patch16_224" else " (or model=vit_ti16 with its weights there)"
        raise WeightsError(
            f"No pretrained '{arch}' weights: {local}; {hub}. Set GNR650_WEIGHTS_DIR=<folder with "
            f"{arch}.safetensors>{other}, model.weights=<file>, or model.pretrained=false."
        ) from e


def _pretrained_stats(built: BuiltModel, net: nn.Module, source: str | None) -> BuiltModel:
    """The normalisation the weights were trained with, when there are weights."""
    if source is not None:
        cfg = net.pretrained_cfg
        built.mean, built.std, built.weights = tuple(cfg["mean"]), tuple(cfg["std"]), source
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
    kwargs = {"img_size": img_size, "drop_path_rate": drop_path_rate}
    net, source = _create_timm(arch, num_classes, kwargs, pretrained, weights, weights_dir)
    params = [p for p, _ in net.named_parameters()]
    built = BuiltModel(
        name or arch,
        net,
        blocks=[f"blocks.{i}" for i in range(len(net.blocks))],
        head=["head_drop", "head"],
        neck=["norm", "fc_norm"],
        img_size=img_size,
        # The embeddings (those this ViT has): the patch embedding, the tokens and position embedding it owns
        # itself as parameters, a pre-norm.
        stem=[
            n
            for n in ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")
            if any(p == n or p.startswith(n + ".") for p in params)
        ],
    )
    return _pretrained_stats(built, net, source)


def build_timm(
    num_classes: int,
    arch: str,
    name: str | None = None,
    img_size: int | None = None,
    pretrained: bool = True,
    weights: str | None = None,
    weights_dir: str | None = None,
    drop_path_rate: float = 0.0,
) -> BuiltModel:
    """Any timm classifier, its structure read from timm's own description of it.

    Blocks are timm's fine-grained layer groups (``group_matcher(coarse=False)``, the groups timm's
    layer-decay uses; see ``_timm_structure``); a stage's downsampling layer trains with the block timm
    groups it with (``block_parts``); the final norm and everything after the last block but the
    classifier (``get_classifier``) form the neck; the groups before the first block, the stem.
    ``img_size``: null = the size the architecture was defined for (``pretrained_cfg``); an int is passed
    to models that take one (ViT, Swin) and otherwise only resizes the input (convolutional nets).
    """
    import timm

    if not timm.is_model(arch):
        raise ValueError(
            f"model.arch={arch!r} is not a timm model name; list them with timm.list_models('<pattern>'), "
            "e.g. 'convnext_tiny', 'swin_tiny_patch4_window7_224', 'deit_small_patch16_224'."
        )
    kwargs = {"drop_path_rate": drop_path_rate}
    sized = kwargs if img_size is None else {**kwargs, "img_size": img_size}
    try:
        net, source = _create_timm(arch, num_classes, sized, pretrained, weights, weights_dir)
    except TypeError as e:  # a convolutional net has no img_size: it takes any input size
        if sized is kwargs or "img_size" not in str(e):
            raise
        net, source = _create_timm(arch, num_classes, kwargs, pretrained, weights, weights_dir)
    classifier = classifier_name(net)
    stem, blocks, parts, neck = _timm_structure(net, classifier)
    if img_size is None:
        img_size = net.pretrained_cfg["input_size"][-1]
    built = BuiltModel(
        name or arch,
        net,
        blocks=blocks,
        head=[classifier],
        neck=neck,
        img_size=img_size,
        block_parts=parts,
        stem=stem,
    )
    return _pretrained_stats(built, net, source)


def classifier_name(net: nn.Module) -> str:
    """The module name of a timm model's classifier (``get_classifier``)."""
    classifier = net.get_classifier()
    name = next((name for name, m in net.named_modules() if m is classifier), None)
    if name is None:  # e.g. distilled models return two heads
        raise ValueError(f"timm's {type(net).__name__} has no single classifier module; use another architecture.")
    return name


def _timm_structure(net: nn.Module, classifier: str) -> tuple[list[str], list[str], dict[str, list[str]], list[str]]:
    """Stem, blocks, the modules timm groups with each block, and the neck, from timm's fine-grained layer groups.

    A group holds one block (the module whose name, digits aside, is the most common one: ``blocks.#``,
    ``stages.#.blocks.#``, ``s#.b#``; or a stage holding just one) with what timm groups before it (a
    stage's downsampling) and, in the last block's group, what timm attaches after it (the final norm:
    neck); groups after the last block (norms, pooling before the classifier) are neck too, groups before
    the first are the stem.
    """
    from timm.models import group_parameters

    if not hasattr(net, "group_matcher"):
        raise ValueError(
            f"timm's {type(net).__name__} does not describe its layer groups (group_matcher), so its blocks are "
            "unknown; use finetune=full or finetune=last with it."
        )
    groups = [
        _covering_modules(net, [p for p in params if not p.startswith(classifier + ".")])
        for params in group_parameters(net, net.group_matcher(coarse=False)).values()
    ]
    shapes = Counter(re.sub(r"\d+", "#", m) for modules in groups for m in modules if re.search(r"\d", m))
    if not shapes:
        raise ValueError(f"timm's {type(net).__name__}: no numbered blocks among its layer groups.")
    shape = shapes.most_common(1)[0][0]
    stem, blocks, parts, neck = [], [], {}, []
    for modules in groups:
        # A block, or a stage holding a single block (its whole module is the group: ``blocks.6`` for ``blocks.6.0``).
        at = [i for i, m in enumerate(modules) if f"{shape}.".startswith(re.sub(r"\d+", "#", m) + ".")]
        if at:
            blocks.append(modules[at[-1]])
            if at[-1] > 0:
                parts[modules[at[-1]]] = modules[: at[-1]]
            neck += modules[at[-1] + 1 :]
        elif blocks:
            neck += modules
        else:
            stem += modules
    return stem, blocks, parts, neck


def _covering_modules(net: nn.Module, params: list[str]) -> list[str]:
    """The fewest module (or parameter) names, in order, whose parameters are exactly ``params``."""
    chosen = set(params)
    names: list[str] = []
    for param in params:
        parts = param.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if i == len(parts) or all(
                f"{prefix}.{n}" in chosen for n, _ in net.get_submodule(prefix).named_parameters()
            ):
                break
        if prefix not in names:
            names.append(prefix)
    return names
