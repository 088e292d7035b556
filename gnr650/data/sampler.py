"""Batch order that a restarted run can reproduce exactly, on one process or split across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Indices of one epoch: a permutation drawn from ``(seed, epoch)`` alone, or ``0..n-1`` without shuffling.

    Nothing is drawn from the global RNG, so a resumed run sees the same order as an uninterrupted
    one, and ``skip(n)`` drops the first ``n`` indices of the next pass (the batches a run killed
    mid-epoch had already trained on). With ``num_replicas`` ranks, rank ``r`` takes positions
    ``r, r + W, ...``: the ranks' k-th batches together are the single-process k-th batch. Training
    pads the permutation so that every rank steps equally often; evaluation (``pad=False``) sees
    each sample exactly once. A ``DistributedSampler`` subclass, so Lightning never wraps it again.
    """

    def __init__(
        self, size: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0, pad: bool = True
    ):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.pad = pad
        self._skip = 0

    def skip(self, n: int) -> None:
        self._skip = n

    def _order(self) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.pad:
            while len(order) < self.total_size:
                order += order[: self.total_size - len(order)]
        mine = order[self.rank :: self.num_replicas]
        start, self._skip = self._skip, 0
        return iter(mine[start:])

    def __len__(self) -> int:
        return self.num_samples if self.pad else len(range(self.rank, len(self.dataset), self.num_replicas))


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """``batch_size`` is the global training batch: each of ``world_size`` processes takes an equal share."""
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} is the global batch and must divide evenly over the "
            f"{world_size} DDP processes (trainer.devices x trainer.num_nodes)."
        )
    return batch_size // world_size
