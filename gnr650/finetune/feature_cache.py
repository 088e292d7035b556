"""Frozen-prefix feature caching: run the frozen front of the network once per split, train the rest on it.

For ``last`` and ``topK`` with augmentation off, every module before the first trainable block is
frozen, in eval mode and sees the same images every epoch, so its output never changes. It is
computed once at fit set-up for train, val and test (ViT: the tokens after block ``12-K``; ResNet:
the activation before the first trainable block; ``last``: the pooled features), kept on the
training device in the dtype the prefix returns (under bf16 autocast: bf16 for a ResNet, float32 for a ViT's
tokens), and served by the datamodule in
place of the images; the module then runs only the suffix. The suffix calls the very modules inside
``net``, so training it trains ``net``, which stays whole for anything that needs images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial, reduce
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from gnr650.data import SPLITS, DecodedImageDataModule, Split
from gnr650.errors import UserError
from gnr650.finetune.strategies import evaluating, is_under

log = logging.getLogger(__name__)

Fn = Callable[[torch.Tensor], torch.Tensor]
# A stage of the forward pass: the names of the modules (or parameters) it uses, and what it computes.
Stage = tuple[tuple[str, ...], Fn]
MODES = ("auto", True, False)


class FeatureCacheError(ValueError, UserError):
    """Caching was asked for (``finetune.cache_features=true``) where it is not exact or does not fit."""


def _vit_stages(net: nn.Module) -> list[Stage]:
    """timm ``VisionTransformer.forward`` (no attention mask), one stage per block."""

    def embed(x):
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))

    # VPT's prompted blocks (gnr650.finetune.vpt) insert their prompts as they run each block.
    run = getattr(net.blocks, "run_block", None)
    blocks = (
        [((f"blocks.{i}", "blocks.prompts"), partial(run, i)) for i in range(len(net.blocks))]
        if run
        else [((f"blocks.{i}",), block) for i, block in enumerate(net.blocks)]
    )
    return (
        [(("patch_embed", "cls_token", "reg_token", "pos_embed", "patch_drop", "norm_pre"), embed)]
        + blocks
        + [
            (("norm",), net.norm),
            (("attn_pool", "fc_norm"), lambda x: net.fc_norm(net.pool(x))),
            (("head_drop", "head"), lambda x: net.head(net.head_drop(x))),
        ]
    )


def _resnet_stages(net: nn.Module) -> list[Stage]:
    """torchvision ``ResNet._forward_impl``, one stage per residual block."""

    def stem(x):
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))

    return (
        [(("conv1", "bn1", "relu", "maxpool"), stem)]
        + [
            ((f"{layer}.{i}",), block)
            for layer in ("layer1", "layer2", "layer3", "layer4")
            for i, block in enumerate(getattr(net, layer))
        ]
        + [(("avgpool",), lambda x: torch.flatten(net.avgpool(x), 1)), (("fc",), net.fc)]
    )


def _timm_stages(net: nn.Module) -> list[Stage]:
    """Any timm classifier, cut only before its classifier (``forward_head(pre_logits=True)`` is the pooled
    input of ``get_classifier()``): enough for ``last``, ``knn`` and the head grid."""
    from gnr650.models.factory import classifier_name

    classifier = classifier_name(net)
    features = tuple(k for k in net.state_dict() if not is_under(k, [classifier]))
    return [
        (features, lambda x: net.forward_head(net.forward_features(x), pre_logits=True)),
        ((classifier,), net.get_classifier()),
    ]


def _stages(net: nn.Module) -> list[Stage]:
    from torchvision.models import ResNet

    if isinstance(net, ResNet):
        return _resnet_stages(net)
    from timm.models.vision_transformer import VisionTransformer  # after the ResNet test: ResNet runs need no timm

    if isinstance(net, VisionTransformer):
        return _vit_stages(net)
    if hasattr(net, "forward_head") and hasattr(net, "get_classifier"):
        return _timm_stages(net)
    raise FeatureCacheError(
        f"Feature caching does not know where to cut a {type(net).__name__} "
        "(it cuts timm models and torchvision ResNet); set finetune.cache_features=false."
    )


def _chain(fns: list[Fn]) -> Fn:
    return lambda x: reduce(lambda h, f: f(h), fns, x)


@dataclass
class NetworkCut:
    """``net(x) == suffix(prefix(x))``; ``prefix`` is frozen, ``suffix`` starts at module ``at``."""

    at: str
    prefix: Fn
    suffix: Fn


def cut_network(net: nn.Module, trainable: list[str]) -> NetworkCut:
    """Split ``net`` before the first stage that holds a trainable module (see ``gnr650.finetune.strategies``)."""
    stages = _stages(net)
    names = [n for stage_names, _ in stages for n in stage_names]
    outside = [k for k in net.state_dict() if not is_under(k, names)]
    if outside:
        raise FeatureCacheError(
            f"{type(net).__name__} has weights outside the layout feature caching knows "
            f"({', '.join(outside[:4])}); set finetune.cache_features=false."
        )
    if not trainable:
        raise FeatureCacheError("nothing trains, so there is no suffix to train on cached features.")
    first = next(
        (
            i
            for i, (stage_names, _) in enumerate(stages)  # a stage inside a trainable module, or holding one
            if any(is_under(n, trainable) for n in stage_names) or any(is_under(m, stage_names) for m in trainable)
        ),
        None,
    )
    if first is None:
        raise FeatureCacheError(
            f"the trainable modules ({', '.join(trainable)}) are outside the layout feature caching knows."
        )
    if first == 0:
        raise FeatureCacheError(
            "nothing before the first trainable module is frozen (e.g. finetune=full), so there is nothing to cache."
        )
    return NetworkCut(
        stages[first][0][0], _chain([f for _, f in stages[:first]]), _chain([f for _, f in stages[first:]])
    )


class FeatureCache(pl.Callback):
    """At fit setup: compute the prefix output of every split and make the datamodule and module use it.

    Setup, not fit start: the optimizer set-up already asks for the train loader, which must serve
    the features. The module is moved to the training device first (Lightning would next). A
    checkpoint restored after setup (``ckpt_path``) may hold other frozen weights: then the cache is
    computed again at fit start, into the same tensors the loaders serve.

    The size is checked on one image first: over ``max_gb`` the cache is refused (``required``) or
    skipped with a warning. ``summary`` describes what was cached (None when skipped).
    """

    def __init__(self, cut: NetworkCut, max_gb: float, required: bool, compile: bool = False):
        self.cut = cut
        self.max_gb = max_gb
        self.required = required
        self.compile = compile
        self.summary: dict[str, Any] | None = None
        self._computed_with: tuple[int, ...] = ()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.summary is not None:
            return
        start = time.perf_counter()
        dm: DecodedImageDataModule = trainer.datamodule
        pl_module.to(trainer.strategy.root_device)
        with evaluating(pl_module):
            probe = self._prefix(trainer, pl_module, dm.split("train").images[:1])
        # Stored as the prefix returns it, so the suffix gets what it gets uncached: under bf16 autocast a
        # ResNet activation is bf16, but a ViT's residual stream (and its final norm) stays float32.
        shape, dtype = tuple(probe.shape[1:]), probe.dtype
        total = sum(len(dm.split(name)) for name in SPLITS)
        gb = total * math.prod(shape) * dtype.itemsize / 1e9
        described = f"{total} x {list(shape)} {str(dtype).removeprefix('torch.')}"
        if gb > self.max_gb:
            message = (
                f"The frozen-prefix cache (output of everything before {self.cut.at}: {described}) would take "
                f"{gb:.2f} GB, over finetune.cache_max_gb={self.max_gb}. Raise finetune.cache_max_gb or set "
                "finetune.cache_features=false."
            )
            if self.required:
                raise FeatureCacheError(message)
            log.warning("%s Training without the cache.", message)
            return
        device = pl_module.device
        dm.served = {
            name: Split(
                torch.empty((len(dm.split(name)), *shape), dtype=dtype, device=device),
                dm.split(name).labels.to(device),
                dm.split(name).files,
            )
            for name in SPLITS
        }
        self._fill(trainer, pl_module)
        pl_module.suffix = torch.compile(self.cut.suffix) if self.compile else self.cut.suffix
        self.summary = {
            "at": self.cut.at,
            "shape": list(shape),
            "dtype": str(dtype).removeprefix("torch."),
            "gb": round(gb, 4),
            "seconds": round(time.perf_counter() - start, 3),
        }
        log.info(
            "Cached the frozen prefix (everything before %s) for %s: %s, %.3f GB in %.1f s.",
            self.cut.at,
            "/".join(SPLITS),
            described,
            gb,
            self.summary["seconds"],
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.summary is not None and _versions(pl_module.net) != self._computed_with:
            log.info("Weights were loaded after the feature cache was computed (checkpoint): computing it again.")
            self._fill(trainer, pl_module)

    def _prefix(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        """Called inside ``evaluating`` (eval mode, no grad)."""
        x = pl_module.preprocess(images.to(pl_module.device, non_blocking=True))  # outside autocast, as in training
        with trainer.precision_plugin.forward_context():
            return self.cut.prefix(x)

    def _fill(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The prefix output of every split, written into the served tensors."""
        dm: DecodedImageDataModule = trainer.datamodule
        batch = dm.eval_batch_size
        with evaluating(pl_module):
            for name in SPLITS:
                images, out = dm.split(name).images, dm.served[name].images
                for i in range(0, len(out), batch):
                    out[i : i + batch] = self._prefix(trainer, pl_module, images[i : i + batch])
        self._computed_with = _versions(pl_module.net)


def _versions(net: nn.Module) -> tuple[int, ...]:
    """Version counters of every weight and buffer: they change when a checkpoint is loaded into them."""
    return tuple(t._version for t in net.state_dict(keep_vars=True).values())


def feature_cache(
    mode: bool | str, max_gb: float, compile: bool, dm: DecodedImageDataModule, module: pl.LightningModule
) -> FeatureCache | None:
    """The cache callback for this run, or None when caching is off, moot or not exact.

    ``mode`` (``finetune.cache_features``): ``auto`` caches where exact and logs why not otherwise;
    ``True`` refuses a run where it is not exact (augmentation on, nothing frozen); ``False`` never caches.
    """
    if mode not in MODES:
        raise FeatureCacheError(f"finetune.cache_features must be auto, true or false (got {mode!r}).")
    if mode is False:
        return None
    if not module.trainable:
        log.info("Feature caching: nothing trains (evaluation only), no cache.")
        return None
    try:
        if dm.augment:
            raise FeatureCacheError(
                "dataset.augment=true changes the images every epoch, so the frozen prefix's output "
                "is not the same twice; set dataset.augment=false or finetune.cache_features=false."
            )
        cut = cut_network(module.net, module.trainable)
    except FeatureCacheError as e:
        if mode is True:
            raise FeatureCacheError(f"finetune.cache_features=true, but {e}") from None
        log.info("Feature caching off: %s", e)
        return None
    return FeatureCache(cut, float(max_gb), required=mode is True, compile=compile)
