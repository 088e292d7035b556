"""Splits (sizes, disjointness, stratification), sampling by seed, decoding, the decoded-data cache."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gnr650.data import (
    Cifar10SubsetDataModule,
    EuroSATDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from gnr650.data.images import decode_images
from gnr650.data.splits import class_balanced_subset, sample_per_class, stratified_split
from gnr650.data.validation import DataSettingError
from gnr650.training.preprocess import DevicePreprocess
from tests.helpers import CIFAR_CLASSES, EUROSAT_CLASSES, ROOT, write_image

EUROSAT_COUNTS = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]


def _eurosat_labels():
    return torch.cat([torch.full((n,), c) for c, n in enumerate(EUROSAT_COUNTS)])


def test_eurosat_standard_split_sizes_are_exact():
    labels = _eurosat_labels()
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=0)
    assert [p.numel() for p in parts] == [16_200, 5_400, 5_400]
    assert torch.cat(parts).unique().numel() == labels.numel()
    for part, ratio in zip(parts, (0.6, 0.2, 0.2)):
        assert torch.bincount(labels[part]).tolist() == [round(n * ratio) for n in EUROSAT_COUNTS]


def test_splits_depend_on_seed_only():
    labels = _eurosat_labels()
    a, b = stratified_split(labels, (0.6, 0.2, 0.2), 0), stratified_split(labels, (0.6, 0.2, 0.2), 0)
    c = stratified_split(labels, (0.6, 0.2, 0.2), 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_class_balanced_fraction_keeps_proportions():
    keep = class_balanced_subset(_eurosat_labels(), 0.4, seed=0)
    assert keep.numel() == 10_800 and torch.bincount(_eurosat_labels()[keep]).tolist() == [
        round(n * 0.4) for n in EUROSAT_COUNTS
    ]
    shuffled = _eurosat_labels()[torch.randperm(27_000, generator=torch.Generator().manual_seed(1))]
    assert torch.equal(class_balanced_subset(shuffled, 1.0, seed=0), torch.arange(27_000))  # the data sets rely on it


def test_per_class_samples_are_disjoint_and_exact():
    labels = torch.arange(10).repeat_interleave(500)
    train, val = sample_per_class(labels, [100, 100], seed=3)
    assert torch.bincount(labels[train]).tolist() == [100] * 10 and torch.bincount(labels[val]).tolist() == [100] * 10
    assert not set(train.tolist()) & set(val.tolist())
    with pytest.raises(ValueError, match="500 images but 400 \\+ 200"):
        sample_per_class(labels, [400, 200], seed=0)


def test_per_class_samples_can_use_every_image_of_a_class():
    """Three parts taking all 4 images of every class: a partition of the indices, 2 + 1 + 1 per class."""
    labels = torch.tensor([1, 0, 2, 1, 0, 2, 2, 0, 1, 1, 0, 2])
    parts = sample_per_class(labels, [2, 1, 1], seed=5)
    assert [torch.bincount(labels[p], minlength=3).tolist() for p in parts] == [[2, 2, 2], [1, 1, 1], [1, 1, 1]]
    assert sorted(torch.cat(parts).tolist()) == list(range(12))


def test_class_balanced_subset_keeps_at_least_one_image_of_a_small_class():
    labels = torch.tensor([0] * 3 + [1] * 20)
    keep = class_balanced_subset(labels, 0.1, seed=0)  # round(0.3) = 0 -> 1 image of class 0; 2 of class 1
    assert torch.bincount(labels[keep]).tolist() == [1, 2]


def test_stratified_split_last_part_takes_the_rounding_remainder():
    """Class sizes 5, 7, 1 by (0.6, 0.2, 0.2): round(n * r) for the first two parts, the rest to the last."""
    labels = torch.tensor([0] * 5 + [1] * 7 + [2])[torch.randperm(13, generator=torch.Generator().manual_seed(0))]
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=2)
    expected = [[3, 4, 1], [1, 1, 0], [1, 2, 0]]  # 5: 3 1 1; 7: round(4.2)=4 round(1.4)=1 rest 2; 1: 1 0 0
    assert [torch.bincount(labels[p], minlength=3).tolist() for p in parts] == expected
    assert sorted(torch.cat(parts).tolist()) == list(range(13))


def test_cifar_subset_from_image_folders(fake_data, tmp_path):
    dm = Cifar10SubsetDataModule(root=str(fake_data), per_class=2, val_per_class=3, cache_dir=str(tmp_path))
    dm.setup()
    assert dm.class_names == CIFAR_CLASSES and dm.summary() == {"train": 20, "val": 30, "test": 30}
    assert not set(dm.split("train").files) & set(dm.split("val").files)
    assert all(
        f"/train/{CIFAR_CLASSES[y]}/" in f for f, y in zip(dm.split("train").files, dm.split("train").labels.tolist())
    )
    assert dm.split("test").images.shape == (30, 3, 32, 32) and dm.split("test").images.dtype == torch.uint8
    other = Cifar10SubsetDataModule(root=str(fake_data), per_class=2, val_per_class=3, cache_dir=str(tmp_path), seed=1)
    other.setup()
    assert other.split("train").files != dm.split("train").files


def test_eurosat_layout_fraction_and_split_files(fake_data, tmp_path):
    dm = EuroSATDataModule(root=str(fake_data), cache_dir=str(tmp_path))
    dm.setup()
    assert dm.class_names == EUROSAT_CLASSES and dm.summary() == {"train": 60, "val": 20, "test": 20}
    files = {s: set(dm.split(s).files) for s in ("train", "val", "test")}
    assert not (files["train"] & files["val"] or files["train"] & files["test"] or files["val"] & files["test"])
    half = EuroSATDataModule(root=str(fake_data), fraction=0.5, cache_dir=str(tmp_path))
    half.setup()
    assert half.summary() == {"train": 30, "val": 10, "test": 10}
    lists = {}
    for s, names in (("train", ["Forest_1.tif", "River_2.tif"]), ("val", ["Highway_3.jpg"]), ("test", ["SeaLake_4"])):
        lists[s] = tmp_path / f"eurosat-{s}.txt"
        lists[s].write_text("\n".join(names) + "\n")
    fixed = EuroSATDataModule(
        root=str(fake_data), split_files={k: str(v) for k, v in lists.items()}, cache_dir=str(tmp_path)
    )
    fixed.setup()
    assert [f.rsplit("/", 1)[1] for f in fixed.split("train").files] == ["Forest_1.jpg", "River_2.jpg"]
    assert fixed.split("val").labels.tolist() == [EUROSAT_CLASSES.index("Highway")]


def test_imagefolder_single_root_is_split_by_ratio(fake_data, tmp_path):
    dm = ImageFolderDataModule(root=str(fake_data / "folder"), ratios=[0.6, 0.2, 0.2], cache_dir=str(tmp_path))
    dm.setup()
    assert dm.class_names == ["birds", "cats", "dogs"] and dm.summary() == {"train": 18, "val": 6, "test": 6}


def test_decoded_cache_is_reused_and_rebuilt_when_files_change(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / "data" / c / f"{i}.png", rng)
    kwargs = {"root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    first = ImageFolderDataModule(**kwargs)
    first.setup()
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3  # one store per split
    again = ImageFolderDataModule(**kwargs)
    again.setup()
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "data" / "a" / "0.png")
    changed = ImageFolderDataModule(**kwargs)
    changed.setup()
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 4  # the split holding the changed file
    idx = changed.split("train").files + changed.split("val").files + changed.split("test").files
    assert any(f.endswith("a/0.png") for f in idx)
    red = torch.cat([changed.split(s).images for s in ("train", "val", "test")])[
        [i for i, f in enumerate(idx) if f.endswith("a/0.png")][0]
    ]
    assert red[0].min() == 255 and red[1].max() == 0


def test_image_modes_and_sizes_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 100, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((8, 8, 3), 200, np.uint8), np.full((8, 8), 255, np.uint8)]), "RGBA")
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    big = Image.new("RGB", (16, 12), (0, 0, 255))
    paths = []
    for name, img, ext in (
        ("g", gray, "png"),
        ("a", rgba, "png"),
        ("c", cmyk, "jpg"),
        ("d", deep, "png"),
        ("big", big, "png"),
    ):
        img.save(tmp_path / f"{name}.{ext}")
        paths.append(tmp_path / f"{name}.{ext}")
    x = decode_images(paths)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.uint8
    assert x[0].unique().tolist() == [100] and x[1].unique().tolist() == [200] and x[3].unique().tolist() == [255]
    assert x[2, 0].float().mean() > 200 and x[2, 1].float().mean() < 50
    assert x[4, 2].min() > 200 and x[4, 0].max() < 50


def test_device_preprocess_resizes_normalises_and_augments():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    pre = DevicePreprocess([0.5] * 3, [0.25] * 3, img_size=64, augment=True)
    plain = pre(x)
    assert plain.shape == (6, 3, 64, 64) and torch.allclose(pre(x), plain)
    same_size = DevicePreprocess([0.5] * 3, [0.25] * 3)(x)
    assert torch.allclose(same_size, (x.float() / 255 - 0.5) / 0.25)
    torch.manual_seed(0)
    assert not torch.allclose(pre(x, augment=True), plain)


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    pre = DevicePreprocess([0.0] * 3, [1.0] * 3, augment=True, crop_padding=2)
    torch.manual_seed(0)
    out = pre.random_crop_flip(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_crops_cover_every_offset_from_0_to_2p_and_both_flips():
    p, n = 2, 1000
    x = torch.arange(8 * 8, dtype=torch.float32).view(1, 1, 8, 8).expand(n, 3, 8, 8)
    pre = DevicePreprocess([0.0] * 3, [1.0] * 3, augment=True, crop_padding=p)
    torch.manual_seed(0)
    out = pre.random_crop_flip(x)
    padded = torch.nn.functional.pad(x[:1], (p, p, p, p), mode="reflect")[0]
    windows = {
        (r, c, f): w.flip(-1) if f else w
        for r in range(2 * p + 1)
        for c in range(2 * p + 1)
        for f in (False, True)
        for w in [padded[:, r : r + 8, c : c + 8]]
    }
    seen = []
    for image in out:
        (match,) = [key for key, w in windows.items() if torch.equal(image, w)]  # exactly one window fits
        seen.append(match)
    assert set(seen) == set(windows)  # every offset in both directions, flipped and not


def test_synthetic_is_deterministic():
    a, b = SyntheticDataModule(seed=0), SyntheticDataModule(seed=0)
    a.setup(), b.setup()
    assert torch.equal(a.split("train").images, b.split("train").images)


def test_eurosat_subset_zip_keeps_the_first_images_of_every_class_in_the_eurosat_layout(fake_data, tmp_path):
    out = tmp_path / "subset.zip"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "eurosat_subset.py"), str(fake_data), str(out), "--per-class", "5"],
        check=True,
        capture_output=True,
    )
    names = zipfile.ZipFile(out).namelist()
    # Numeric order: _1 to _5 (not _1, _10, _2, ...).
    assert sorted(names) == sorted(f"eurosat/2750/{c}/{c}_{i}.jpg" for c in EUROSAT_CLASSES for i in range(1, 6))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(out).extractall(unpacked)
    dm = EuroSATDataModule(root=str(unpacked), cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.class_names == sorted(EUROSAT_CLASSES) and sum(dm.summary().values()) == 5 * len(EUROSAT_CLASSES)


@pytest.fixture(scope="module")
def eurosat_1400(tmp_path_factory) -> Path:
    """A EuroSAT layout of 10 classes x 140 images: pools of 840 / 280 / 280 at 60/20/20, room for VTAB-1k."""
    root = tmp_path_factory.mktemp("eurosat1400")
    rng = np.random.default_rng(0)
    for c in EUROSAT_CLASSES:
        for i in range(140):
            write_image(root / "eurosat" / "2750" / c / f"{c}_{i}.jpg", rng, size=8)
    return root


def test_vtab1k_draws_800_and_200_from_the_pools_and_keeps_one_test_split(eurosat_1400, tmp_path):
    def splits(seed, refit=False):
        dm = EuroSATDataModule(
            root=str(eurosat_1400), protocol="vtab1k", refit=refit, seed=seed, cache_dir=str(tmp_path)
        )
        dm.setup()
        return {s: set(dm.split(s).files) for s in ("train", "val", "test")}, dm.summary()

    (first, sizes), (second, _) = splits(0), splits(1)
    assert sizes == {"train": 800, "val": 200, "test": 280}
    assert first["test"] == second["test"]  # VTAB's test split does not move with the run's seed
    assert first["train"] != second["train"] and first["val"] != second["val"]
    ratio = EuroSATDataModule(root=str(eurosat_1400), cache_dir=str(tmp_path))  # the pools: the 60/20/20 split
    ratio.setup()
    pools = {s: set(ratio.split(s).files) for s in ("train", "val", "test")}
    for drawn in (first, second):
        assert drawn["train"] <= pools["train"] and drawn["val"] <= pools["val"] and drawn["test"] == pools["test"]
    refit, refit_sizes = splits(0, refit=True)
    assert refit_sizes == {"train": 1000, "val": 200, "test": 280}
    assert refit["train"] == first["train"] | first["val"] and refit["val"] == first["val"]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"protocol": "vtab"}, "dataset.protocol='vtab': use null"),
        ({"protocol": "vtab1k", "fraction": 0.5}, "leave dataset.fraction at 1.0"),
        ({"refit": True}, "add dataset.protocol=vtab1k"),
    ],
)
def test_vtab1k_settings_that_cannot_work_are_refused(settings, message, fake_data, tmp_path):
    with pytest.raises(DataSettingError, match=message):
        EuroSATDataModule(root=str(fake_data), cache_dir=str(tmp_path), **settings)


def test_vtab1k_on_too_small_a_data_set_says_so(fake_data, tmp_path):
    dm = EuroSATDataModule(root=str(fake_data), protocol="vtab1k", cache_dir=str(tmp_path))
    with pytest.raises(DataSettingError, match="VTAB-1k draws 800 training and 200 validation images, but the pools"):
        dm.setup()


def test_train_per_class_keeps_that_many_of_each_class_and_the_other_splits_whole(fake_data, tmp_path):
    whole = EuroSATDataModule(root=str(fake_data), cache_dir=str(tmp_path))
    whole.setup()
    few = EuroSATDataModule(root=str(fake_data), train_per_class=2, cache_dir=str(tmp_path))
    few.setup()
    assert torch.bincount(few.split("train").labels).tolist() == [2] * len(EUROSAT_CLASSES)
    assert set(few.split("train").files) < set(whole.split("train").files)
    assert few.split("val").files == whole.split("val").files and few.split("test").files == whole.split("test").files
    with pytest.raises(DataSettingError, match="train_per_class=7, but the training split holds only 6 images"):
        EuroSATDataModule(root=str(fake_data), train_per_class=7, cache_dir=str(tmp_path)).setup()
    with pytest.raises(DataSettingError, match="not with dataset.protocol"):
        EuroSATDataModule(root=str(fake_data), train_per_class=2, protocol="vtab1k", cache_dir=str(tmp_path))


def test_a_small_training_set_is_repeated_whole_up_to_min_train_images(fake_data, tmp_path):
    few = EuroSATDataModule(root=str(fake_data), train_per_class=2, min_train_images=45, cache_dir=str(tmp_path))
    few.setup()
    train = few.split("train")
    assert few.train_repeats == 3 and len(train) == 60  # 20 distinct images, 3 copies: the first count >= 45
    distinct = train.files[:20]
    assert train.files == distinct * 3 and torch.equal(train.images, train.images[:20].repeat(3, 1, 1, 1))
    assert torch.equal(train.labels, train.labels[:20].repeat(3))
    assert few.summary() == {"train": 20, "val": 20, "test": 20}  # each image counted once
    enough = EuroSATDataModule(root=str(fake_data), train_per_class=2, min_train_images=20, cache_dir=str(tmp_path))
    enough.setup()
    assert enough.train_repeats == 1 and enough.split("train").files == distinct
    with pytest.raises(DataSettingError, match="min_train_images=0"):
        EuroSATDataModule(root=str(fake_data), min_train_images=0, cache_dir=str(tmp_path))


def test_vtab1k_takes_pools_of_exactly_800_and_200_and_refuses_either_short():
    from gnr650.data.splits import vtab1k

    train, val = torch.arange(800) * 2, torch.arange(200) * 2 + 1
    drawn, held = vtab1k(train, val, seed=3, refit=False)
    assert torch.equal(drawn, train) and torch.equal(held, val)  # everything, sorted
    refit, _ = vtab1k(train, val, seed=3, refit=True)
    assert torch.equal(refit, torch.sort(torch.cat([train, val])).values)
    whole = (
        "VTAB-1k draws 800 training and 200 validation images, but the pools hold {} and {} (the train and val parts "
        "of the data set's ratio split): this data set is too small for it; leave dataset.protocol at null."
    )
    for short_train, short_val in ((799, 1000), (1000, 199)):
        with pytest.raises(DataSettingError, match=f"^{re.escape(whole.format(short_train, short_val))}$"):
            vtab1k(torch.arange(short_train), torch.arange(short_val), seed=0, refit=False)
