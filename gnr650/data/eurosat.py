"""EuroSAT RGB (torchvision layout), split stratified 60/20/20 by seed or by split files."""

from __future__ import annotations

from pathlib import Path

import torch

from gnr650.data.datamodule import SPLITS, DecodedImageDataModule
from gnr650.data.decoded_store import decoded_splits
from gnr650.data.folders import missing_data, scan_class_folders
from gnr650.data.splits import class_balanced_subset, stratified_split
from gnr650.data.validation import check_fraction, check_ratios


class EuroSATDataModule(DecodedImageDataModule):
    """``root/eurosat/2750/<Class>/*.jpg``; ``fraction`` keeps a class-balanced subset before splitting.

    ``split_files`` ({train, val, test}: text files with one image file name per line, as in the
    Neumann et al. split) replaces the seeded split; names are matched by their stem, so the
    ``.tif`` names of the multispectral lists work too.
    """

    name = "eurosat"

    def __init__(
        self,
        root: str,
        fraction: float = 1.0,
        ratios=(0.6, 0.2, 0.2),
        split_files: dict | None = None,
        download: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.fraction = check_fraction(fraction)
        self.ratios = check_ratios(ratios)
        self.split_files = dict(split_files) if split_files else None
        self.download = download

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

    def load(self):
        image_dir = self._image_dir()
        files, labels, class_names = scan_class_folders(image_dir)
        labels_t = torch.as_tensor(labels)
        if self.split_files:
            parts = self._split_from_files(files)
        else:
            keep = class_balanced_subset(labels_t, self.fraction, self.seed)
            parts = [keep[p] for p in stratified_split(labels_t[keep], self.ratios, self.seed)]
        parts = {
            name: (f"eurosat-{name}", [files[i] for i in p.tolist()], labels_t[p].tolist())
            for name, p in zip(SPLITS, parts)
        }
        return decoded_splits(parts, self.storage, self.skip_unreadable), class_names
