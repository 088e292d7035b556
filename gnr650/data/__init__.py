"""Data sets decoded into memory, split by seed, served as uint8 batches."""

from gnr650.data.cifar10 import Cifar10SubsetDataModule
from gnr650.data.datamodule import SPLITS, DecodedImageDataModule, Split
from gnr650.data.eurosat import EuroSATDataModule
from gnr650.data.imagefolder import ImageFolderDataModule
from gnr650.data.synthetic import SyntheticDataModule

__all__ = [
    "SPLITS",
    "Split",
    "DecodedImageDataModule",
    "Cifar10SubsetDataModule",
    "EuroSATDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
]
