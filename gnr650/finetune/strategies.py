"""Fine-tuning strategies as module or parameter names: which parts train; everything else is frozen.

A strategy is a list of names (``apply_freeze`` sets ``requires_grad`` from it, the one place where
freezing happens). A module name trains the whole module, which runs in train mode; a parameter name
(``bitfit``: ``blocks.0.attn.qkv.bias``) trains that tensor only, and its module stays in eval mode, so
partly trained BatchNorm layers keep their running statistics fixed (``set_mode``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gnr650.errors import UserError
from gnr650.models import BuiltModel

WHOLE = ""  # module name of the whole network
# Normalisation layers whose affine weight and bias ``norm`` trains (timm's LayerNorm2d etc. subclass these).
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
PARAM_SELECTIONS = ("bias", "norm")
BLOCKS_FROM = ("top", "bottom")


class StrategyError(ValueError, UserError):
    """A fine-tuning setting this model cannot do; the message says what it can."""


def trainable_modules(
    built: BuiltModel,
    train_blocks: int | str,
    train_head: bool = True,
    train_params: str | None = None,
    blocks_from: str = "top",
) -> list[str]:
    """Names of the modules (and parameters) to train.

    ``train_blocks``: ``"all"`` (the whole network, stem and embeddings included) or k: with
    ``blocks_from="top"`` the last k blocks plus the neck (e.g. ViT's final norm), with ``"bottom"`` the
    stem plus the first k blocks (surgical fine-tuning, Lee et al. 2023). The head trains when
    ``train_head``; training blocks under a frozen, freshly initialised head is refused. ``train_params``
    adds single parameters anywhere in the network: ``bias`` (BitFit) or ``norm`` (normalisation affine weights).
    """
    if train_params is not None and train_params not in PARAM_SELECTIONS:
        raise StrategyError(
            f"finetune.train_params must be one of {', '.join(PARAM_SELECTIONS)} or null (got {train_params!r})."
        )
    if blocks_from not in BLOCKS_FROM:
        raise StrategyError(
            f"finetune.blocks_from must be top (the last train_blocks blocks and the neck) or bottom (the stem and "
            f"the first train_blocks blocks) (got {blocks_from!r})."
        )
    n = len(built.blocks)
    if train_blocks == "all":
        if not train_head:
            raise StrategyError(
                "finetune.train_blocks=all with finetune.train_head=false would train the backbone under a "
                "random frozen head; use finetune=frozen (nothing trained) or finetune=full."
            )
        return [WHOLE]
    if isinstance(train_blocks, bool) or not isinstance(train_blocks, int) or train_blocks < 0:
        raise StrategyError(f"finetune.train_blocks must be 'all' or an integer from 0 to {n} (got {train_blocks!r}).")
    if train_blocks > n:
        raise StrategyError(
            f"finetune.train_blocks={train_blocks} but {built.name} has only {n} blocks "
            f"({built.blocks[0]} .. {built.blocks[-1]}); use at most {n}, or finetune=full."
        )
    if train_blocks and not train_head:
        raise StrategyError(
            "Training blocks while the freshly initialised head stays frozen cannot learn the task; "
            "set finetune.train_head=true."
        )
    names = []
    if train_blocks and blocks_from == "top":
        names = built.block_modules(built.blocks[n - train_blocks :]) + built.neck
    elif train_blocks:
        names = built.stem + built.block_modules(built.blocks[:train_blocks])
    if train_head:
        names += built.head
    params = {name for name, _ in built.net.named_parameters()}
    names = [m for m in names if m in params or _has_module(built.net, m)]
    if train_params is not None:
        if train_params == "norm" and not any(isinstance(m, NORM_LAYERS) for m in built.net.modules()):
            raise StrategyError(f"finetune=norm: {built.name} has no normalisation layers to train.")
        names += [p for p in parameter_names(built.net, train_params) if not is_under(p, names)]
    return names


def parameter_names(net: nn.Module, selection: str) -> list[str]:
    """Every bias (``bias``: linear, conv and norm layers alike), or the affine parameters of every
    normalisation layer (``norm``), in network order."""
    if selection == "bias":
        return [name for name, _ in net.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    return [
        f"{module_name}.{name}" if module_name else name
        for module_name, module in net.named_modules()
        if isinstance(module, NORM_LAYERS)
        for name, _ in module.named_parameters(recurse=False)
    ]


def _has_module(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
        return True
    except AttributeError:
        return False


def is_under(name: str, modules: list[str]) -> bool:
    """``name`` (a module, parameter or state-dict key) is one of ``modules`` or inside one (``WHOLE``: any)."""
    return any(m == WHOLE or name == m or name.startswith(m + ".") for m in modules)


def apply_freeze(net: nn.Module, trainable: list[str]) -> None:
    """Set ``requires_grad`` from the module list: the one place where freezing happens."""
    for name, p in net.named_parameters():
        p.requires_grad_(is_under(name, trainable))


def set_mode(net: nn.Module, trainable: list[str], training: bool) -> None:
    """Train mode only for trainable modules: frozen BatchNorm statistics and dropout stay fixed.

    Parameter names switch no module: a BatchNorm whose affine parameters train (``bitfit``, ``norm``)
    keeps the statistics it was loaded with, so it normalises alike in training and evaluation.
    """
    if not training or WHOLE in trainable:
        net.train(training)
        return
    net.eval()
    for name in trainable:
        if _has_module(net, name):
            net.get_submodule(name).train()


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad for the block; each module's own training flag is restored after."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        for m, mode in modes.items():
            m.training = mode


def count_params(net: nn.Module) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }


def check_lp_epochs(lp_epochs: int | None, max_epochs: int | None) -> None:
    """LP-FT's probe phase must be whole epochs and leave at least one to fine-tune; checked before data are read."""
    if lp_epochs is None:
        return
    if isinstance(lp_epochs, bool) or not isinstance(lp_epochs, int) or lp_epochs < 1:
        raise StrategyError(
            f"finetune.lp_epochs must be a number of epochs >= 1 (got {lp_epochs!r}): the head alone trains that long "
            "before everything is fine-tuned; null for no probe phase."
        )
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs <= lp_epochs:
        raise StrategyError(
            f"finetune.lp_epochs={lp_epochs} leaves no epoch to fine-tune in trainer.max_epochs={max_epochs}: "
            f"set trainer.max_epochs above {lp_epochs}" + (" or lower finetune.lp_epochs." if lp_epochs > 1 else ".")
        )
