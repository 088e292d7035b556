"""EuroSAT RGB (torchvision layout), split stratified 60/20/20 by seed or by split files, or VTAB-1k's 800/200."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gnr650.data.datamodule import SPLITS, DecodedImageDataModule, repeated
from gnr650.data.decoded_store import decoded_splits
from gnr650.data.folders import missing_data, scan_class_folders
from gnr650.data.splits import VTAB_SPLIT_SEED, class_balanced_subset, sample_per_class, stratified_split, vtab1k
from gnr650.data.validation import DataSettingError, check_fraction, check_ratios, is_count

log = logging.getLogger(__name__)
PROTOCOLS = ("vtab1k",)


class EuroSATDataModule(DecodedImageDataModule):
    """``root/eurosat/2750/<Class>/*.jpg``; ``fraction`` keeps a class-balanced subset before splitting.

    ``split_files`` ({train, val, test}: text files with one image file name per line, as in the
    Neumann et al. split) replaces the seeded split; names are matched by their stem, so the
    ``.tif`` names of the multispectral lists work too.

    ``protocol="vtab1k"``: the 60/20/20 split of the whole data set at a fixed seed gives the pools and the test
    split (the same for every run seed); the run's seed draws 800 training images from the first and 200 validation
    images from the second. ``refit``: train on all 1,000 (VTAB's final run; validation is then not held out).

    ``train_per_class``: train on that many images of each class, drawn with the seed from the training split
    (validation and test stay whole): the x axis of a data-efficiency curve. ``min_train_images``: an epoch holds at
    least this many training images, a smaller training set repeated whole (k copies, rounded up), so that every size
    trains about as many steps and is validated as often; ``summary()`` counts each image once.
    """

    name = "eurosat"

    def __init__(
        self,
        root: str,
        fraction: float = 1.0,
        ratios=(0.6, 0.2, 0.2),
        split_files: dict | None = None,
        download: bool = False,
        protocol: str | None = None,
        refit: bool = False,
        train_per_class: int | None = None,
        min_train_images: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.fraction = check_fraction(fraction)
        self.ratios = check_ratios(ratios)
        self.split_files = dict(split_files) if split_files else None
        self.download = download
        if protocol not in (None, *PROTOCOLS):
            raise DataSettingError(f"dataset.protocol={protocol!r}: use null (the ratio split) or one of {PROTOCOLS}.")
        if protocol and (self.fraction != 1.0 or self.split_files):
            raise DataSettingError(
                f"dataset.protocol={protocol} draws from the whole data set's split: leave dataset.fraction at 1.0 "
                "and dataset.split_files at null."
            )
        if refit and not protocol:
            raise DataSettingError("dataset.refit=true refits on VTAB-1k's 1,000 images: add dataset.protocol=vtab1k.")
        if train_per_class is not None and (not is_count(train_per_class) or protocol):
            raise DataSettingError(
                f"dataset.train_per_class={train_per_class!r}: a whole number of at least 1, and not with "
                "dataset.protocol (VTAB-1k fixes its own 800 training images)."
            )
        if min_train_images is not None and not is_count(min_train_images):
            raise DataSettingError(f"dataset.min_train_images={min_train_images!r}: a whole number of at least 1.")
        self.protocol, self.refit, self.train_per_class = protocol, bool(refit), train_per_class
        self.min_train_images = min_train_images

    def _image_dir(self) -> Path:
        candidates = [self.root / "eurosat" / "2750", self.root / "2750"]
        for c in candidates:
            if c.is_dir():
                return c
        if self.download:
            from torchvision.datasets import EuroSAT

            try:
                EuroSAT(str(self.root), download=True)
            except Exception as e:
                raise RuntimeError(
                    f"Could not download EuroSAT into '{self.root}' ({e}). Offline? Point paths.data_dir at a "
                    "local copy."
                ) from e
            return candidates[0]
        raise missing_data(
            "EuroSAT",
            candidates,
            "Set paths.data_dir=<folder> (or GNR650_DATA_DIR) to the folder holding eurosat/2750, or add "
            "dataset.download=true when online.",
        )

    def _split_from_files(self, files: list[Path]) -> list[torch.Tensor]:
        by_stem = {f.stem: i for i, f in enumerate(files)}
        out = []
        for name in SPLITS:
            path = Path(self.split_files[name])
            if not path.is_file():
                raise FileNotFoundError(f"Split file for '{name}' not found: '{path}'.")
            stems = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
            unknown = [s for s in stems if s not in by_stem]
            if unknown:
                raise ValueError(
                    f"Split file '{path}' names {len(unknown)} images not in the data set (e.g. '{unknown[0]}')."
                )
            out.append(torch.as_tensor(sorted(by_stem[s] for s in stems), dtype=torch.int64))
        return out

    def _per_class(self, labels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        smallest = int(torch.bincount(labels, minlength=len(class_names)).min())
        if smallest < self.train_per_class:
            raise DataSettingError(
                f"dataset.train_per_class={self.train_per_class}, but the training split holds only {smallest} "
                "images of its smallest class: lower it, or raise dataset.fraction."
            )
        return sample_per_class(labels, [self.train_per_class], self.seed)[0]

    def load(self):
        image_dir = self._image_dir()
        files, labels, class_names = scan_class_folders(image_dir)
        labels_t = torch.as_tensor(labels)
        if self.split_files:
            parts = self._split_from_files(files)
        elif self.protocol == "vtab1k":
            train, val, test = stratified_split(labels_t, self.ratios, VTAB_SPLIT_SEED)
            parts = [*vtab1k(train, val, self.seed, self.refit), test]
            if self.refit:
                log.warning(
                    "dataset.refit=true: the 200 validation images are trained on too, so validation accuracy and "
                    "the best-on-val checkpoint are not held out; read the test accuracy."
                )
        else:
            keep = class_balanced_subset(labels_t, self.fraction, self.seed)
            parts = [keep[p] for p in stratified_split(labels_t[keep], self.ratios, self.seed)]
        if self.train_per_class is not None:
            parts[0] = parts[0][self._per_class(labels_t[parts[0]], class_names)]
        parts = {
            name: (f"eurosat-{name}", [files[i] for i in p.tolist()], labels_t[p].tolist())
            for name, p in zip(SPLITS, parts)
        }
        splits = decoded_splits(parts, self.storage, self.skip_unreadable)
        if self.min_train_images:
            self.train_repeats = -(-self.min_train_images // len(splits["train"]))
            if self.train_repeats > 1:
                log.info(
                    "The %d training images are repeated %d times an epoch (dataset.min_train_images=%d).",
                    len(splits["train"]),
                    self.train_repeats,
                    self.min_train_images,
                )
                splits["train"] = repeated(splits["train"], self.train_repeats)
        return splits, class_names
