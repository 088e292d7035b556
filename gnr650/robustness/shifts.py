"""The shift suite: every shift is a function of one uint8 image [H, W, 3] at its native size, a level and a seed.

Groups:

- ``corruption``: the 15 ImageNet-C corruptions at severities 1-5, from their reference implementation
  (``imagecorruptions``, Michaelis et al. 2019; the ``imagecorruptions-imaug`` release, since the original 1.1.2 no
  longer runs on NumPy 2 and scikit-image >= 0.21). They need images of at least 32 x 32 pixels.
- ``remote_sensing``: cloud cover, haze, ground-resolution change and sensor colour shift (each defined below).
- ``symmetry``: the overhead-imagery symmetries (rotations by 90/180/270 degrees, flips), one level each: an overhead
  scene has no up, so these should barely matter, and show whether a strategy learned that.

Shifts apply at the images' native size (EuroSAT 64 x 64), before the run's own resize to the network's input,
as a real shift reaches the pipeline. Level 0 of every shift is the image itself. Every random draw comes from the
seed given per image (``image_seed``), so a shifted image is the same in every run and on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from gnr650.errors import UserError

CORRUPTION, REMOTE_SENSING, SYMMETRY = "corruption", "remote_sensing", "symmetry"
GROUPS = (CORRUPTION, REMOTE_SENSING, SYMMETRY)
ALL = "all"
# The 15 corruptions of ImageNet-C's benchmark (imagecorruptions' "common" set), in its order.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# imagecorruptions draws from its own seed argument here and from NumPy's global generator elsewhere.
SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")
MIN_CORRUPTION_SIZE = 32  # imagecorruptions refuses smaller images


class ShiftSettingError(ValueError, UserError):
    """A ``robustness.shifts`` entry that names no shift or group."""


class ShiftNotApplicable(ValueError):
    """This shift cannot apply to these images (the message says why); the suite skips it with a warning."""


@dataclass(frozen=True)
class Shift:
    """A named shift with its levels (1..``levels``; level 0 is the identity)."""

    name: str
    group: str
    levels: int
    apply: Callable[[np.ndarray, int, int], np.ndarray]  # (image [H, W, 3] uint8, level >= 1, seed) -> same

    def __call__(self, image: np.ndarray, level: int, seed: int) -> np.ndarray:
        if not 0 <= level <= self.levels:
            raise ValueError(f"{self.name} has levels 0 to {self.levels} (got {level}).")
        return image if level == 0 else self.apply(image, level, seed)

    def check_size(self, height: int, width: int) -> None:
        """``ShiftNotApplicable`` when images of this size cannot take the shift."""
        if self.group == CORRUPTION and min(height, width) < MIN_CORRUPTION_SIZE:
            raise ShiftNotApplicable(
                f"{self.name} (imagecorruptions) needs images of at least {MIN_CORRUPTION_SIZE} x "
                f"{MIN_CORRUPTION_SIZE} pixels; these are {height} x {width}."
            )

    @property
    def middle_level(self) -> int:
        """The level WiSE curves use: ImageNet-C's severity 3 of 5, the only level of a symmetry."""
        return (self.levels + 1) // 2


def image_seed(seed: int, shift: str, level: int, index: int) -> int:
    """The seed of one image's shift: fixed by the suite's seed, the shift, its level and the image's position in
    its split (not in the evaluated subset, so an image is shifted alike whichever subset holds it)."""
    return int(np.random.SeedSequence([seed, *shift.encode(), level, index]).generate_state(1)[0])


def corruption(name: str, image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """ImageNet-C's corruption ``name`` at severity ``level`` from imagecorruptions, its randomness from ``seed``."""
    from imagecorruptions import corrupt  # imported on first use: numba compiles at import

    state = np.random.get_state()  # imagecorruptions draws from the global generator: seed it, then restore it
    np.random.seed(seed)
    try:
        extra = {"seed": seed} if name in SEEDED_BY_ARGUMENT else {}
        out = corrupt(image, severity=level, corruption_name=name, **extra)
    finally:
        np.random.set_state(state)
    return np.asarray(out, dtype=np.uint8)


def _as_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


CLOUD_COVER = (0.1, 0.2, 0.35, 0.5, 0.7)


def cloud(image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """Cloud cover: a plasma fractal (imagecorruptions' diamond-square, as its fog uses; map side the power of two
    above the image side, wibble decay 2, cropped to the image) thresholded at its ``1 - CLOUD_COVER[level - 1]``
    quantile t, so that fraction of the scene lies under cloud: opacity ``clip((field - t) / (0.1 range) + 0.5, 0,
    1)``, a soft edge 10% of the fractal's range wide; each pixel blended towards a bright cloud grey, 235, by it."""
    from imagecorruptions.corruptions import plasma_fractal

    h, w = image.shape[:2]
    size = 1 << max(h, w, 2).bit_length()  # plasma_fractal's map side is a power of two
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        field = plasma_fractal(mapsize=size, wibbledecay=2.0)[:h, :w]
    finally:
        np.random.set_state(state)
    cover = CLOUD_COVER[level - 1]
    threshold = np.quantile(field, 1 - cover)
    spread = np.ptp(field) * 0.1 or 1.0
    opacity = np.clip((field - threshold) / spread + 0.5, 0, 1)[..., None]
    return _as_uint8(image * (1 - opacity) + 235.0 * opacity)


HAZE_TRANSMISSION = (0.85, 0.7, 0.55, 0.4, 0.25)


def haze(image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """Haze by the atmospheric scattering model I = J t + A (1 - t) (Koschmieder): a uniform transmission
    ``t = HAZE_TRANSMISSION[level - 1]`` and airlight A = 200 (a pale grey). No randomness."""
    t = HAZE_TRANSMISSION[level - 1]
    return _as_uint8(image * t + 200.0 * (1 - t))


RESOLUTION_FACTORS = (2, 4)


def resolution(image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """Coarser ground resolution: area-averaged down by ``RESOLUTION_FACTORS[level - 1]`` (2x, 4x), then
    bilinear back up to the native size, as a coarser sensor's scene resampled onto this one's grid."""
    import cv2

    h, w = image.shape[:2]
    f = RESOLUTION_FACTORS[level - 1]
    small = cv2.resize(image, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


COLOUR_GAIN = (0.05, 0.1, 0.15, 0.2, 0.3)  # the largest relative gain change per channel
COLOUR_OFFSET = (5.0, 10.0, 15.0, 20.0, 30.0)  # the largest offset per channel, in 0-255 units


def colour(image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """Sensor colour shift: each channel c becomes ``gain_c * x + offset_c``, gains uniform in 1 +- ``COLOUR_GAIN``
    and offsets uniform in +- ``COLOUR_OFFSET`` at the level, drawn per image (another sensor's or another day's
    radiometric calibration)."""
    rng = np.random.default_rng(seed)
    gain = 1 + rng.uniform(-COLOUR_GAIN[level - 1], COLOUR_GAIN[level - 1], size=3)
    offset = rng.uniform(-COLOUR_OFFSET[level - 1], COLOUR_OFFSET[level - 1], size=3)
    return _as_uint8(image * gain + offset)


def rotate(quarter_turns: int, image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """The scene rotated by ``quarter_turns`` x 90 degrees (counter-clockwise)."""
    return np.ascontiguousarray(np.rot90(image, quarter_turns))


def flip(axis: int, image: np.ndarray, level: int, seed: int) -> np.ndarray:
    """The scene mirrored: ``axis`` 1 left-right, 0 top-bottom."""
    return np.ascontiguousarray(np.flip(image, axis))


SHIFTS: dict[str, Shift] = {
    **{name: Shift(name, CORRUPTION, 5, partial(corruption, name)) for name in CORRUPTIONS},
    "cloud": Shift("cloud", REMOTE_SENSING, len(CLOUD_COVER), cloud),
    "haze": Shift("haze", REMOTE_SENSING, len(HAZE_TRANSMISSION), haze),
    "resolution": Shift("resolution", REMOTE_SENSING, len(RESOLUTION_FACTORS), resolution),
    "colour": Shift("colour", REMOTE_SENSING, len(COLOUR_GAIN), colour),
    "rot90": Shift("rot90", SYMMETRY, 1, partial(rotate, 1)),
    "rot180": Shift("rot180", SYMMETRY, 1, partial(rotate, 2)),
    "rot270": Shift("rot270", SYMMETRY, 1, partial(rotate, 3)),
    "hflip": Shift("hflip", SYMMETRY, 1, partial(flip, 1)),
    "vflip": Shift("vflip", SYMMETRY, 1, partial(flip, 0)),
}


def select_shifts(names: Sequence[str]) -> list[Shift]:
    """The shifts ``names`` asks for (shift names, group names or ``all``), each once, in the suite's order."""
    if isinstance(names, str):
        names = [names]
    wanted: set[str] = set()
    for name in names:
        if name == ALL:
            wanted |= set(SHIFTS)
        elif name in GROUPS:
            wanted |= {s.name for s in SHIFTS.values() if s.group == name}
        elif name in SHIFTS:
            wanted.add(name)
        else:
            raise ShiftSettingError(
                f"robustness.shifts: {name!r} is no shift or group. Groups: {ALL}, {', '.join(GROUPS)}; "
                f"shifts: {', '.join(SHIFTS)}."
            )
    if not wanted:
        raise ShiftSettingError(f"robustness.shifts is empty; name shifts or groups ({ALL}, {', '.join(GROUPS)}).")
    return [s for s in SHIFTS.values() if s.name in wanted]


def shift_images(shift: Shift, level: int, images: np.ndarray, indices: Sequence[int], seed: int) -> np.ndarray:
    """``images`` [N, 3, H, W] uint8 shifted, image i seeded by its split position ``indices[i]``."""
    out = np.empty_like(images)
    for i, (image, index) in enumerate(zip(images, indices)):
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
        out[i] = shift(hwc, level, image_seed(seed, shift.name, level, int(index))).transpose(2, 0, 1)
    return out
