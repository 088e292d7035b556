"""Files the framework writes and reads: atomic writes (a kill mid-write never leaves a half-written file
that later code trusts) and torch files read without executing pickled code."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def ensure_writable(directory: str | os.PathLike) -> None:
    """Make ``directory`` if needed and prove that it takes files; ``OSError`` if not."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
        pass


def _new_file(directory: Path, prefix: str) -> tuple[str, int]:
    """A new empty file in ``directory`` created as ``open()`` creates one (mode 0o666 less the umask, which the
    kernel applies), unlike ``tempfile.mkstemp``'s private 0o600; returns its path and permission bits."""
    while True:
        tmp = str(directory / f"{prefix}{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        return tmp, mode


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions a plain ``open()`` gives, also when ``write`` makes its own private file
    (safetensors' writer does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _new_file(path.parent, f".{path.name}.")
    try:
        write(tmp)
        os.chmod(tmp, mode)
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
