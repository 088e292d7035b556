"""A user's own class-per-folder data: ``root/{train,val,test}/<class>/*`` or one ``root/<class>/*`` split by ratios."""

from __future__ import annotations

from pathlib import Path

import torch

from gnr650.data.datamodule import SPLITS, InMemoryDataModule
from gnr650.data.decoded_store import decoded_split
from gnr650.data.folders import missing_data, scan_class_folders
from gnr650.data.splits import class_balanced_subset, stratified_split
from gnr650.data.validation import check_fraction, check_ratios


class ImageFolderDataModule(InMemoryDataModule):
    """Pre-split folders are used as they are; a single folder is split stratified by ``ratios``.

    ``image_size`` ([H, W]) resizes every image at decode time; by default the most common size is kept
    and others are resized to it.
    """

    name = "imagefolder"

    def __init__(self, root: str | None, ratios=(0.6, 0.2, 0.2), fraction: float = 1.0, image_size=None, **kwargs):
        super().__init__(**kwargs)
        if not root:
            raise ValueError(
                "dataset=imagefolder needs dataset.root=<folder> (with <class>/ sub-folders, or "
                "train/val/test/<class>/)."
            )
        self.root = Path(root)
        self.ratios = check_ratios(ratios)
        self.fraction = check_fraction(fraction)
        self.image_size = tuple(image_size) if image_size else None

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
            scanned = {s: scan_class_folders(self.root / s, class_names) for s in SPLITS}
            splits = {}
            for s, (files, labels, _) in scanned.items():
                labels_t = torch.as_tensor(labels)
                keep = class_balanced_subset(labels_t, self.fraction, self.seed)
                splits[s] = decoded_split(
                    f"imagefolder-{s}",
                    [files[i] for i in keep.tolist()],
                    labels_t[keep].tolist(),
                    self.cache_dir,
                    self.root,
                    self.image_size,
                )
            return splits, class_names
        files, labels, class_names = scan_class_folders(self.root)
        labels_t = torch.as_tensor(labels)
        keep = class_balanced_subset(labels_t, self.fraction, self.seed)
        data = decoded_split(
            "imagefolder",
            [files[i] for i in keep.tolist()],
            labels_t[keep].tolist(),
            self.cache_dir,
            self.root,
            self.image_size,
        )
        parts = stratified_split(data.labels, self.ratios, self.seed)
        return {s: data.subset(p) for s, p in zip(SPLITS, parts)}, class_names
