"""The run's artefact index: ``artifacts/index.json``, a list of ``{kind, path, layer, epoch}``.

Several callbacks share one index, so every write is a read-modify-write of the whole list,
written atomically (temp file + ``os.replace``) so that a reader never sees a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

from gnr650.files import write_json

INDEX_NAME = "index.json"


def read_index(artifacts_dir: str | Path) -> list[dict]:
    """The entries recorded so far (empty when there is no index yet)."""
    path = Path(artifacts_dir) / INDEX_NAME
    if not path.exists():
        return []
    return json.loads(path.read_text())


def entry(kind: str, path: str | Path, layer: str | None = None, epoch: int | None = None) -> dict:
    """One index entry; ``path`` is relative to the artifacts directory."""
    path = Path(path)
    if path.is_absolute():
        raise ValueError(f"index paths are relative to artifacts/, got {path}")
    return {"kind": kind, "path": path.as_posix(), "layer": layer, "epoch": epoch}


def append_to_index(artifacts_dir: str | Path, entries: list[dict]) -> Path:
    """Add ``entries``; an entry for a path already listed replaces the old one (the file was rewritten)."""
    new_paths = {e["path"] for e in entries}
    merged = [e for e in read_index(artifacts_dir) if e["path"] not in new_paths] + list(entries)
    return write_json(Path(artifacts_dir) / INDEX_NAME, merged)
