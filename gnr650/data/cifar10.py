"""CIFAR-10 subset for the overfitting study: ``per_class`` training images per class, seeded."""

from __future__ import annotations

from pathlib import Path

import torch

from gnr650.data.datamodule import DecodedImageDataModule, Split
from gnr650.data.decoded_store import decoded_splits
from gnr650.data.folders import missing_data, scan_class_folders
from gnr650.data.splits import sample_per_class
from gnr650.data.validation import is_count

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Cifar10SubsetDataModule(DecodedImageDataModule):
    """Train = ``per_class`` images per class, val = a further disjoint ``val_per_class``, test = the full test split.

    Sources, tried in order under ``root``: torchvision's ``cifar-10-batches-py`` (read into memory whole: the
    storage settings apply to image folders); image folders ``cifar10-jpg/{train,test}/<class>`` or
    ``{train,test}/<class>``; a torchvision download when ``download=true``.
    """

    name = "cifar10-subset"

    def __init__(self, root: str, per_class: int = 100, val_per_class: int = 100, download: bool = False, **kwargs):
        super().__init__(**kwargs)
        for key, n in (("per_class", per_class), ("val_per_class", val_per_class)):
            if not is_count(n):
                raise ValueError(f"dataset.{key} must be a positive integer (got {n!r}).")
        self.root = Path(root)
        self.per_class = per_class
        self.val_per_class = val_per_class
        self.download = download

    def _folder_root(self) -> Path | None:
        for cand in (self.root / "cifar10-jpg", self.root):
            if (cand / "train").is_dir() and (cand / "test").is_dir():
                return cand
        return None

    def _sample(self, labels: torch.Tensor) -> list[torch.Tensor]:
        try:
            return sample_per_class(labels, [self.per_class, self.val_per_class], self.seed)
        except ValueError as e:
            raise ValueError(f"{e} Lower dataset.per_class / dataset.val_per_class.") from None

    def load(self):
        folder = self._folder_root()
        if folder is not None and not (self.root / "cifar-10-batches-py").is_dir():
            # Only the sampled training images are decoded (labels come from the folder names).
            files, labels, _ = scan_class_folders(folder / "train", CIFAR10_CLASSES)
            parts = {
                name: (f"cifar10-{name}", [files[i] for i in idx.tolist()], [labels[i] for i in idx.tolist()])
                for name, idx in zip(("train", "val"), self._sample(torch.as_tensor(labels)))
            }
            files, labels, _ = scan_class_folders(folder / "test", CIFAR10_CLASSES)
            parts["test"] = ("cifar10-test", files, labels)
            return decoded_splits(parts, self.storage, self.skip_unreadable), CIFAR10_CLASSES
        if not (self.root / "cifar-10-batches-py").is_dir() and not self.download:
            raise missing_data(
                "CIFAR-10",
                [self.root / "cifar-10-batches-py", self.root / "cifar10-jpg", self.root],
                "Set paths.data_dir=<folder> (or GNR650_DATA_DIR) to where CIFAR-10 lies, or add "
                "dataset.download=true when online.",
            )
        from torchvision.datasets import CIFAR10

        out = []
        for train in (True, False):
            try:
                ds = CIFAR10(str(self.root), train=train, download=self.download)
            except Exception as e:
                raise RuntimeError(
                    f"Could not download CIFAR-10 into '{self.root}' ({e}). Offline? Point paths.data_dir at a "
                    "local copy."
                ) from e
            out.append(Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)))
        train_all, test = out
        train_idx, val_idx = self._sample(train_all.labels)
        return {"train": train_all.subset(train_idx), "val": train_all.subset(val_idx), "test": test}, CIFAR10_CLASSES
