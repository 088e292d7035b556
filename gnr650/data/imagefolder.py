"""A user's own class-per-folder data: ``root/{train,val,test}/<class>/*`` or one ``root/<class>/*`` split by ratios."""

from __future__ import annotations

from pathlib import Path

import torch

from gnr650.data.datamodule import SPLITS, DecodedImageDataModule
from gnr650.data.decoded_store import decoded_splits
from gnr650.data.folders import missing_data, scan_class_folders
from gnr650.data.splits import class_balanced_subset, stratified_split
from gnr650.data.validation import check_fraction, check_ratios


class ImageFolderDataModule(DecodedImageDataModule):
    """Pre-split folders are used as they are; a single folder is split stratified by ``ratios``.

    Images are stored at the most common size (others are resized to it) unless ``decode_size`` says otherwise.
    """

    name = "imagefolder"

    def __init__(self, root: str | None, ratios=(0.6, 0.2, 0.2), fraction: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not root:
            raise ValueError(
                "dataset=imagefolder needs dataset.root=<folder> (with <class>/ sub-folders, or "
                "train/val/test/<class>/)."
            )
        self.root = Path(root)
        self.ratios = check_ratios(ratios)
        self.fraction = check_fraction(fraction)

    def load(self):
        if not self.root.is_dir():
            raise missing_data("Image folder data set", [self.root], "Set dataset.root=<folder>.")
        if (self.root / "train").is_dir():
            missing = [s for s in SPLITS if not (self.root / s).is_dir()]
            if missing:
                raise missing_data(
                    f"Split folders {missing}",
                    [self.root / s for s in missing],
                    "A pre-split data set needs train/, val/ and test/ folders of class sub-folders.",
                )
            _, _, class_names = scan_class_folders(self.root / "train")
            parts = {}
            for s in SPLITS:
                files, labels, _ = scan_class_folders(self.root / s, class_names)
                labels_t = torch.as_tensor(labels)
                parts[s] = (files, labels_t, class_balanced_subset(labels_t, self.fraction, self.seed))
        else:
            files, labels, class_names = scan_class_folders(self.root)
            labels_t = torch.as_tensor(labels)
            keep = class_balanced_subset(labels_t, self.fraction, self.seed)
            split = stratified_split(labels_t[keep], self.ratios, self.seed)
            parts = {s: (files, labels_t, keep[p]) for s, p in zip(SPLITS, split)}
        parts = {
            s: (f"imagefolder-{s}", [files[i] for i in idx.tolist()], labels_t[idx].tolist())
            for s, (files, labels_t, idx) in parts.items()
        }
        return decoded_splits(parts, self.storage, self.skip_unreadable), class_names
