"""Seeded, stratified index selection: per-class samples, class-balanced fractions, ratio splits."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gnr650.data.validation import DataSettingError


def _class_perms(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        out.append(idx[torch.randperm(idx.numel(), generator=g)])
    return out


def sample_per_class(labels: torch.Tensor, counts: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Disjoint seeded samples: the i-th result holds ``counts[i]`` indices of every class."""
    parts: list[list[torch.Tensor]] = [[] for _ in counts]
    for c, perm in enumerate(_class_perms(labels, seed)):
        if perm.numel() < sum(counts):
            raise ValueError(
                f"Class {c} has {perm.numel()} images but {' + '.join(map(str, counts))} = {sum(counts)} are needed."
            )
        start = 0
        for i, n in enumerate(counts):
            parts[i].append(perm[start : start + n])
            start += n
    return [torch.sort(torch.cat(p)).values for p in parts]


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The same ``fraction`` of every class (at least one image each); ``fraction=1``: every index, in order."""
    keep = [perm[: max(1, round(perm.numel() * fraction))] for perm in _class_perms(labels, seed)]
    return torch.sort(torch.cat(keep)).values


def stratified_split(labels: torch.Tensor, ratios: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split every class by ``ratios`` (summing to 1); the last part takes the rounding remainder."""
    parts: list[list[torch.Tensor]] = [[] for _ in ratios]
    for perm in _class_perms(labels, seed):
        n, start = perm.numel(), 0
        for i, r in enumerate(ratios):
            stop = n if i == len(ratios) - 1 else start + round(n * r)
            parts[i].append(perm[start:stop])
            start = stop
    return [torch.sort(torch.cat(p)).values for p in parts]


VTAB_TRAIN, VTAB_VAL = 800, 200  # VTAB-1k (Zhai et al. 2019): 800 training and 200 validation images per task
VTAB_SPLIT_SEED = 0  # the train/val/test pools behind VTAB-1k stay fixed across run seeds, as VTAB's test split is


def vtab1k(train: torch.Tensor, val: torch.Tensor, seed: int, refit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """VTAB-1k's 800 training and 200 validation indices, drawn with ``seed`` from the ``train`` and ``val`` pools
    (uniformly, not per class: VTAB takes the first images of shuffled splits); ``refit``: train on all 1,000."""
    if train.numel() < VTAB_TRAIN or val.numel() < VTAB_VAL:
        raise DataSettingError(
            f"VTAB-1k draws {VTAB_TRAIN} training and {VTAB_VAL} validation images, but the pools hold "
            f"{train.numel()} and {val.numel()} (the train and val parts of the data set's ratio split): this data "
            "set is too small for it; leave dataset.protocol at null."
        )
    g = torch.Generator().manual_seed(seed)
    train800 = torch.sort(train[torch.randperm(train.numel(), generator=g)[:VTAB_TRAIN]]).values
    val200 = torch.sort(val[torch.randperm(val.numel(), generator=g)[:VTAB_VAL]]).values
    return (torch.sort(torch.cat([train800, val200])).values if refit else train800), val200
