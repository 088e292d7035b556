"""The shift suite's definitions: identity at level 0, determinism per image, each remote-sensing shift against its
own definition computed independently, and the clear refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gnr650.robustness.shift_cache import ShiftCache
from gnr650.robustness.shifts import (
    CLOUD_COVER,
    COLOUR_GAIN,
    COLOUR_OFFSET,
    CORRUPTIONS,
    GROUPS,
    HAZE_TRANSMISSION,
    SEEDED_BY_ARGUMENT,
    SHIFTS,
    ShiftNotApplicable,
    ShiftSettingError,
    image_seed,
    select_shifts,
    shift_images,
)


def _images(n: int = 3, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_level_zero_is_the_image_itself_and_every_level_keeps_shape_and_dtype(name):
    images = _images(2)
    assert np.array_equal(shift_images(SHIFTS[name], 0, images, [0, 1], seed=0), images)
    top = shift_images(SHIFTS[name], SHIFTS[name].levels, images, [0, 1], seed=0)
    assert top.shape == images.shape and top.dtype == np.uint8
    assert not np.array_equal(top, images), f"{name} at its top level left the images unchanged"


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "frost", "cloud", "colour"])
def test_a_random_shift_is_the_same_for_the_same_image_position_and_seed_and_leaves_numpy_alone(name):
    images = np.repeat(_images(1), 2, axis=0)  # the same pixels at two split positions
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = shift_images(SHIFTS[name], 3, images, [7, 8], seed=0)
    assert np.array_equal(np.random.get_state()[1], before), "the global NumPy generator was moved"
    assert np.array_equal(first, shift_images(SHIFTS[name], 3, images, [7, 8], seed=0))
    assert not np.array_equal(first[0], first[1]), "two split positions drew the same randomness"
    assert not np.array_equal(first, shift_images(SHIFTS[name], 3, images, [7, 8], seed=1))


def test_seeds_differ_by_shift_level_and_position():
    seeds = {image_seed(0, s, lv, i) for s in ("cloud", "haze") for lv in (1, 2) for i in (0, 1)}
    assert len(seeds) == 8


def test_symmetries_are_the_rotations_and_flips_torch_computes():
    images = _images(2)
    t = torch.from_numpy(images)
    expected = {
        "rot90": torch.rot90(t, 1, (2, 3)),
        "rot180": torch.rot90(t, 2, (2, 3)),
        "rot270": torch.rot90(t, 3, (2, 3)),
        "hflip": torch.flip(t, (3,)),
        "vflip": torch.flip(t, (2,)),
    }
    for name, want in expected.items():
        assert np.array_equal(shift_images(SHIFTS[name], 1, images, [0, 1], 0), want.numpy()), name


def test_haze_is_the_scattering_model_by_hand():
    images = _images(1)
    for level, t in enumerate(HAZE_TRANSMISSION, start=1):
        want = np.clip(np.rint(images.astype(float) * t + 200 * (1 - t)), 0, 255).astype(np.uint8)
        assert np.array_equal(shift_images(SHIFTS["haze"], level, images, [0], 0), want)


def test_resolution_is_the_block_mean_resampled_back_up():
    """Down: the mean of each f x f block (computed here with numpy); up: bilinear (cv2's, as the definition says)."""
    import cv2

    images = _images(1, size=32)
    hwc = images[0].transpose(1, 2, 0).astype(float)
    for level, f in ((1, 2), (2, 4)):
        blocks = np.rint(hwc.reshape(32 // f, f, 32 // f, f, 3).mean((1, 3))).astype(np.uint8)
        want = cv2.resize(blocks, (32, 32), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        got = shift_images(SHIFTS["resolution"], level, images, [0], 0)[0]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, level  # cv2 rounds block means its own way


def test_cloud_covers_the_stated_fraction_of_the_scene():
    white = np.zeros((4, 3, 64, 64), np.uint8)
    for level, cover in enumerate(CLOUD_COVER, start=1):
        clouded = shift_images(SHIFTS["cloud"], level, white, range(4), 0)
        under = (clouded[:, 0] >= 235 / 2).mean()  # opacity >= 0.5 is under cloud
        assert under == pytest.approx(cover, abs=0.03), level


def test_colour_shift_is_its_docstrings_gain_and_offset_per_channel():
    """Gains and offsets drawn as the docstring says, from the image's seed; values clipped, never wrapped."""
    images, clipped = _images(2, size=32), False
    for level in range(1, 6):
        got = shift_images(SHIFTS["colour"], level, images, [3, 4], seed=0)
        for i, index in enumerate((3, 4)):
            rng = np.random.default_rng(image_seed(0, "colour", level, index))
            gain = 1 + rng.uniform(-COLOUR_GAIN[level - 1], COLOUR_GAIN[level - 1], size=3)
            offset = rng.uniform(-COLOUR_OFFSET[level - 1], COLOUR_OFFSET[level - 1], size=3)
            exact = images[i].astype(float) * gain[:, None, None] + offset[:, None, None]
            assert np.array_equal(got[i], np.clip(np.rint(exact), 0, 255).astype(np.uint8)), level
            clipped |= bool(((exact > 255) | (exact < 0)).any())
    assert clipped  # the comparison covered the clipping


def test_groups_and_names_select_shifts_in_suite_order():
    assert [s.name for s in select_shifts(["all"])] == list(SHIFTS)
    assert [s.name for s in select_shifts(["corruption"])] == list(CORRUPTIONS) and len(CORRUPTIONS) == 15
    assert [s.name for s in select_shifts(["vflip", "haze", "symmetry"])] == [
        "haze",
        "rot90",
        "rot180",
        "rot270",
        "hflip",
        "vflip",
    ]
    assert {s.group for s in select_shifts(["all"])} == set(GROUPS)


def test_one_name_given_as_a_string_selects_that_shift():
    assert [s.name for s in select_shifts("haze")] == ["haze"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["fgo"],
            "'fgo' is no shift or group. Groups: all, corruption, remote_sensing, symmetry; shifts: gaussian_noise, "
            "shot_noise, impulse_noise",
        ),
        ([], "robustness.shifts is empty; name shifts or groups (all, corruption, remote_sensing, symmetry)."),
    ],
)
def test_an_unknown_or_empty_selection_is_refused_with_the_options(names, message):
    with pytest.raises(ShiftSettingError, match=re.escape(message)):
        select_shifts(names)


def test_corruptions_refuse_images_smaller_than_they_need_and_other_shifts_take_them():
    with pytest.raises(ShiftNotApplicable, match="fog .*at least 32 x 32 pixels; these are 28 x 28"):
        SHIFTS["fog"].check_size(28, 28)
    for name in ("cloud", "haze", "resolution", "colour", "rot90"):
        SHIFTS[name].check_size(28, 28)
    SHIFTS["fog"].check_size(32, 32)  # imagecorruptions' own minimum


def test_a_level_beyond_the_shifts_is_refused():
    with pytest.raises(ValueError, match="haze has levels 0 to 5 .got 6."):
        SHIFTS["haze"](_images(1)[0].transpose(1, 2, 0), 6, 0)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_imagecorruptions_own_under_the_images_seed(name):
    from imagecorruptions import corrupt

    hwc = np.ascontiguousarray(_images(1)[0].transpose(1, 2, 0))
    np.random.seed(77)
    want = corrupt(hwc, severity=3, corruption_name=name, **({"seed": 77} if name in SEEDED_BY_ARGUMENT else {}))
    got = SHIFTS[name](hwc, 3, 77)
    assert got.dtype == np.uint8 and np.array_equal(got, np.asarray(want, dtype=np.uint8))


def test_cloud_is_its_docstrings_definition():
    from imagecorruptions.corruptions import plasma_fractal

    hwc = _images(1, size=40)[0].transpose(1, 2, 0).astype(float)
    for level, cover in enumerate(CLOUD_COVER, start=1):
        np.random.seed(5)
        field = plasma_fractal(mapsize=64, wibbledecay=2)[:40, :40]  # 64: the power of two above 40
        t = np.quantile(field, 1 - cover)
        opacity = np.clip((field - t) / (0.1 * (field.max() - field.min())) + 0.5, 0, 1)[..., None]
        want = np.clip(np.rint(hwc * (1 - opacity) + 235 * opacity), 0, 255).astype(np.uint8)
        got = SHIFTS["cloud"](hwc.astype(np.uint8), level, 5)
        assert got.dtype == np.uint8 and np.array_equal(got, want), level


def test_the_cache_stores_bit_identical_shifts_and_reuses_them(tmp_path):
    images, indices = _images(5, size=32), np.arange(10, 15)
    a = ShiftCache(images, indices, seed=0, cache_dir=str(tmp_path / "a"))
    first = a.get(SHIFTS["gaussian_noise"], 2).clone()
    (store,) = (tmp_path / "a").glob("shift-gaussian_noise-2-*.u8")
    stamp = store.stat().st_mtime_ns
    assert torch.equal(a.get(SHIFTS["gaussian_noise"], 2), first) and store.stat().st_mtime_ns == stamp  # reused
    again = ShiftCache(images.copy(), indices.copy(), seed=0, cache_dir=str(tmp_path / "b")).get(
        SHIFTS["gaussian_noise"], 2
    )
    assert torch.equal(again, first)  # rebuilt elsewhere: the same bytes
    direct = shift_images(SHIFTS["gaussian_noise"], 2, images, indices, 0)
    assert np.array_equal(first.numpy(), direct)
    other = ShiftCache(images, indices + 1, seed=0, cache_dir=str(tmp_path / "a")).get(SHIFTS["gaussian_noise"], 2)
    assert not torch.equal(other, first) and len(list((tmp_path / "a").glob("shift-*.u8"))) == 2  # new key
