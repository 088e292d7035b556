"""The one base class for errors a user causes and can fix (bad input, missing data or weights, a setting that cannot
work), and how every entry point reports one: its message alone on stderr, no traceback, exit status 2
(``HYDRA_FULL_ERROR=1`` shows the traceback instead); any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

# Exit status of a stopped UserError: the usage-error convention (argparse, POSIX utilities).
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An expected error: its message says what was wrong and what to do."""


def full_tracebacks() -> bool:
    """``HYDRA_FULL_ERROR=1`` (Hydra's own switch, honoured by every entry point): show user errors' tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def user_error(error: BaseException) -> UserError | None:
    """The UserError behind ``error``: itself, or the one Hydra's ``instantiate`` wrapped (a constructor's error)."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, UserError) else None


@contextmanager
def reporting_user_errors(prog: str) -> Iterator[None]:
    """Around an entry point's work: a UserError becomes ``<prog>: error: <message>`` on stderr and exit status 2,
    without its traceback or the exception it wraps; with ``HYDRA_FULL_ERROR=1`` it propagates as it is."""
    try:
        yield
    except Exception as e:
        error = user_error(e)
        if error is None or full_tracebacks():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
