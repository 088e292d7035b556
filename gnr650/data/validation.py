"""Checks of data-set settings about meaning (types are checked by the config schemas), shared by the data modules."""

from __future__ import annotations

from gnr650.errors import UserError


class DataSettingError(ValueError, UserError):
    """A dataset setting that cannot work; the message names it and what it takes."""


def is_count(value, least: int = 1) -> bool:
    """A whole number (not a bool, not a string from a command line) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise DataSettingError(f"dataset.fraction must be a number in (0, 1] (got {fraction!r}).")
    return float(fraction)


def check_ratios(ratios) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise DataSettingError(
            f"dataset.ratios must be three positive train/val/test fractions summing to 1 (got {list(ratios)})."
        )
    return ratios
