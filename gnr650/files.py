"""Files the framework writes and reads: atomic writes (a kill mid-write never leaves a half-written file
that later code trusts) and torch files read without executing pickled code."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)  # read once at import (setting it is process-wide), then put back
os.umask(_UMASK)


def ensure_writable(directory: str | os.PathLike) -> None:
    """Make ``directory`` if needed and prove that it takes files; ``OSError`` if not."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the renamed file gets the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    return atomic_write(path, _write)


def unsafe_global(error: pickle.UnpicklingError) -> str | None:
    """What torch's ``weights_only`` loader refused to import, when that was the reason (else the file is garbage)."""
    return next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)


@contextmanager
def refusing_pickled_code(
    path: str | os.PathLike | None, error: type[Exception], what: str, advice: str
) -> Iterator[None]:
    """Turn torch's ``weights_only`` refusal while loading ``path`` (a ``what``) into ``error`` naming the file.

    Garbage reads as "corrupt"; a pickle of code as "refusing", with what it would have imported and ``advice``.
    """
    try:
        yield
    except pickle.UnpicklingError as e:
        refused = unsafe_global(e)
        if refused is None:
            raise error(f"Cannot read {what} '{path}': it is corrupt or not a PyTorch {what}.") from e
        raise error(
            f"Refusing to load {what} '{path}': it needs arbitrary pickled code to load ({refused}). {advice}"
        ) from e
