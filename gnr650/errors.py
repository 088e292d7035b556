"""The one base class for errors a user causes and can fix (bad input, missing data or weights, a setting that cannot
work). The entry points print such an error as its message alone, without a traceback (``HYDRA_FULL_ERROR=1``
shows it); any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """An expected error: its message says what was wrong and what to do."""
