"""The datamodule: decoded uint8 tensors (in memory, or memory-mapped from a disk store), batches gathered from
them, no worker processes.

Resizing, normalisation and augmentation happen on the device after transfer (see
``gnr650.training.preprocess``), so a dataset is decoded once and every epoch costs only tensor indexing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gnr650.data.sampler import ResumableSampler, per_rank_batch_size
from gnr650.data.storage import SplitStorage, release_freed_memory
from gnr650.data.validation import is_count

SPLITS = ("train", "val", "test")
STATS_CHUNK_ELEMENTS = 1 << 22  # float64 values per chunk in channel_stats (32 MB)
EXACT_STATS_MAX_ELEMENTS = 2**28  # 1 GB as float32


@dataclass
class Split:
    """One split: uint8 images [N, 3, H, W], int64 labels [N], the source files when known, where the images
    are (``memory``, or ``disk``: a tensor over a memory-mapped store, see ``gnr650.data.decoded_store``), and the
    files left out as unreadable (``dataset.skip_unreadable``)."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str] = field(default_factory=list)
    storage: str = "memory"
    skipped: list[str] = field(default_factory=list)

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
        if self.split.storage == "disk":
            # Gathered in file order (sequential reads), then put back in the sampler's order.
            index = torch.as_tensor(indices)
            ascending, order = index.sort()
            gathered = self.split.images[ascending]
            images = torch.empty_like(gathered)
            images[order] = gathered
            return images, self.split.labels[index]
        # Moved without blocking: a plain copy to the GPU would wait for it at every step.
        index = torch.as_tensor(indices).to(self.split.labels.device, non_blocking=True)
        return self.split.images[index], self.split.labels[index]


def _batch(batch):
    return batch


def _prefetched(batches: Iterator, pin: bool) -> Iterator:
    """``batches``, each gathered in a background thread while the one before it is used (pinned when ``pin``)."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(("batch", tuple(t.pin_memory() for t in batch) if pin else batch)):
                    return
            put(("done", None))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    threading.Thread(target=work, daemon=True, name="gnr650-prefetch").start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


class _DiskLoader(DataLoader):
    """For splits in a disk store, the memory-bounded path: each pass starts by handing the heap memory that earlier
    batches freed back to the OS (``release_freed_memory``); for a GPU trainer the next batch is read and pinned
    while the current one trains (memory gathers need no help)."""

    def __init__(self, *args, prefetch: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefetch = prefetch

    def __iter__(self):
        release_freed_memory()
        batches = super().__iter__()
        return _prefetched(batches, pin=True) if self.prefetch else batches


def repeated(split: Split, copies: int) -> Split:
    """``split`` ``copies`` times over, in memory (for small training sets: an epoch of a fixed minimum size)."""
    return Split(
        split.images.repeat(copies, 1, 1, 1),
        split.labels.repeat(copies),
        list(split.files) * copies,
        "memory",
        list(split.skipped),
    )


class DecodedImageDataModule(pl.LightningDataModule):
    """Base class of the data sets: splits of decoded uint8 images, in memory or in a memory-mapped store
    (``storage``); subclasses implement ``load()`` returning the three splits and the class names."""

    name = "dataset"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        augment: bool = False,
        crop_padding: int = 4,
        seed: int = 0,
        cache_dir: str | None = None,
        storage: str = "auto",
        memory_budget_gb: float | None = None,
        decode_size=None,
        devices=1,
        skip_unreadable: bool = False,
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
        # Where decoded image files go (``devices``: the trainer's, as each process on a node holds its own
        # in-memory copy); data sets generated or read into memory whole ignore it.
        self.storage = SplitStorage(storage, memory_budget_gb, decode_size, cache_dir, devices)
        # Unreadable image files: false = one error naming them all, true = trained without (one warning names them).
        self.skip_unreadable = bool(skip_unreadable)
        self.splits: dict[str, Split] = {}
        # What the loaders serve in place of ``splits`` when set: copies on the GPU, or cached
        # features (gnr650.finetune.feature_cache). ``split()`` keeps giving the images, on the CPU.
        self.served: dict[str, Split] = {}
        self.class_names: list[str] = []
        # The splits of the final evaluation (the test loop's dataloaders, in this order): a learning-rate search
        # leaves out test (gnr650.tuning), so that nothing it chooses by can depend on a test label.
        self.final_splits: tuple[str, ...] = SPLITS
        # Copies of the training split an epoch holds (a small training set repeated, see ``repeated``).
        self.train_repeats = 1

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
        ):  # batches sliced on the GPU, no copies per step (splits on disk are read batch by batch)
            self.served = {
                k: Split(s.images.to(device), s.labels.to(device))
                for k, s in self.splits.items()
                if s.storage == "memory"
            }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        self.setup()
        return self.splits[name]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and (unbiased) std of the training images, in [0, 1] units: up to
        ``EXACT_STATS_MAX_ELEMENTS`` in one float32 pass (as every earlier version, so results do not move), beyond
        that summed in float64 over chunks so that a large split is never held in memory whole as floats."""
        images = self.split("train").images
        if images.numel() <= EXACT_STATS_MAX_ELEMENTS:  # one float32 pass as before: the same normalisation, results
            x = images.float().div_(255)
            return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        per_chunk = max(1, STATS_CHUNK_ELEMENTS // images[0].numel())
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        for start in range(0, len(images), per_chunk):
            x = images[start : start + per_chunk].to(torch.float64).div_(255)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        n = images.numel() // 3
        mean = total / n
        var = (squares - n * mean.square()) / max(1, n - 1)
        return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-6).tolist()

    def _loader(self, name: str, train: bool) -> DataLoader:
        data = self.served[name] if name in self.served else self.split(name)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = ResumableSampler(len(data), self.seed, shuffle=train, num_replicas=world, rank=rank, pad=train)
        batch_size = per_rank_batch_size(self.batch_size, world) if train else self.eval_batch_size
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        on_disk = data.storage == "disk"
        return (_DiskLoader if on_disk else DataLoader)(
            _TensorBatches(data),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train
            and len(sampler) > 1
            and len(sampler) % batch_size == 1,  # batch norm fails on a batch of one
            collate_fn=_batch,
            num_workers=0,
            generator=torch.Generator(),  # loading never draws from the global RNG (exact resume, see sampler.py)
            # A reading thread only for a GPU trainer: on the CPU the step already keeps every core busy and the
            # thread's gathers compete with it (study 1 from a disk store: epochs 1.26x slower with it, 1.0x without).
            **({"prefetch": device.type == "cuda"} if on_disk else {}),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        """The final evaluation: ``final_splits`` (train, val and test) without shuffling or augmentation."""
        return [self._loader(name, train=False) for name in self.final_splits]

    def summary(self) -> dict[str, int]:
        """Images per split, each counted once (a repeated training split by its distinct images)."""
        return {name: len(self.split(name)) // (self.train_repeats if name == "train" else 1) for name in SPLITS}
