"""The in-memory datamodule: decoded uint8 tensors, batches sliced from them, no worker processes.

Resizing, normalisation and augmentation happen on the device after transfer (see
``gnr650.training.preprocess``), so a dataset is decoded once and every epoch costs only tensor indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gnr650.data.sampler import ResumableSampler, per_rank_batch_size
from gnr650.data.validation import is_count

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: uint8 images [N, 3, H, W], int64 labels [N], and the source files when known."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, index: torch.Tensor) -> Split:
        files = [self.files[i] for i in index.tolist()] if self.files else []
        return Split(self.images[index], self.labels[index], files)


class _TensorBatches(Dataset):
    """Map-style view whose ``__getitems__`` gathers a whole batch with one index op."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.images[i], self.split.labels[i]

    def __getitems__(self, indices: list[int]):
        # Moved without blocking: a plain copy to the GPU would wait for it at every step.
        index = torch.as_tensor(indices).to(self.split.labels.device, non_blocking=True)
        return self.split.images[index], self.split.labels[index]


def _batch(batch):
    return batch


class InMemoryDataModule(pl.LightningDataModule):
    """Base class: subclasses implement ``load()`` returning the three splits and the class names."""

    name = "dataset"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        augment: bool = False,
        crop_padding: int = 4,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if not (is_count(batch_size) and is_count(eval_batch_size)):
            raise ValueError(f"batch_size and eval_batch_size must be positive (got {batch_size}, {eval_batch_size}).")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.crop_padding = crop_padding
        self.seed = seed
        self.cache_dir = cache_dir
        self.splits: dict[str, Split] = {}
        # What the loaders serve in place of ``splits`` when set: copies on the GPU, or cached
        # features (gnr650.finetune.feature_cache). ``split()`` keeps giving the images, on the CPU.
        self.served: dict[str, Split] = {}
        self.class_names: list[str] = []

    def load(self) -> tuple[dict[str, Split], list[str]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            splits, class_names = self.load()
            for name in SPLITS:
                if name not in splits or len(splits[name]) == 0:
                    raise ValueError(f"The {self.name} '{name}' split is empty; check the dataset settings.")
            self.splits, self.class_names = splits, list(class_names)
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if (
            device is not None and device.type == "cuda" and not self.served
        ):  # batches sliced on the GPU, no copies per step
            self.served = {k: Split(s.images.to(device), s.labels.to(device)) for k, s in self.splits.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        self.setup()
        return self.splits[name]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.split("train").images.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def _loader(self, name: str, train: bool) -> DataLoader:
        data = self.served[name] if name in self.served else self.split(name)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = ResumableSampler(len(data), self.seed, shuffle=train, num_replicas=world, rank=rank, pad=train)
        batch_size = per_rank_batch_size(self.batch_size, world) if train else self.eval_batch_size
        return DataLoader(
            _TensorBatches(data),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train
            and len(sampler) > 1
            and len(sampler) % batch_size == 1,  # batch norm fails on a batch of one
            collate_fn=_batch,
            num_workers=0,
            generator=torch.Generator(),  # loading never draws from the global RNG (exact resume, see sampler.py)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        """The final evaluation: train, val and test without shuffling or augmentation, in ``SPLITS`` order."""
        return [self._loader(name, train=False) for name in SPLITS]

    def summary(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}
