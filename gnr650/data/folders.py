"""Find class-per-folder image files, with errors that say where we looked and what to do."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from gnr650.data.images import is_image_file
from gnr650.errors import UserError

log = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError, UserError):
    """Data is missing or empty where the config points; the message names the fix."""


def missing_data(what: str, looked: Sequence[Path], hint: str) -> DataNotFoundError:
    places = "\n".join(f"  - {p.resolve()}" for p in looked)
    return DataNotFoundError(f"{what} not found. Looked in:\n{places}\n{hint}")


def scan_class_folders(root: Path, class_names: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """List ``root/<class>/*`` image files with integer labels.

    Classes are the sub-folders in sorted order, or ``class_names`` (in that order) when given.
    Non-image files are skipped with a warning; an empty class folder is an error.
    """
    if not root.is_dir():
        raise missing_data(f"Image folder '{root}'", [root], "Point the dataset at a folder of class sub-folders.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = found
    else:
        missing = [c for c in class_names if c not in found]
        if missing:
            raise DataNotFoundError(f"Class folders {missing} are missing in '{root}' (found: {found}).")
    if not class_names:
        raise DataNotFoundError(f"No class folders in '{root}': expected '{root}/<class>/<image files>'.")
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for label, name in enumerate(class_names):
        entries = sorted(p for p in (root / name).iterdir() if p.is_file())
        images = [p for p in entries if is_image_file(p)]
        skipped += [p for p in entries if not is_image_file(p) and not p.name.startswith(".")]
        if not images:
            raise DataNotFoundError(
                f"Class folder '{root / name}' holds no image files "
                f"({', '.join(e.name for e in entries[:5]) or 'it is empty'}). "
                "Add images or remove the folder."
            )
        files += images
        labels += [label] * len(images)
    if skipped:
        log.warning("Skipped %d non-image files under %s (e.g. '%s').", len(skipped), root, skipped[0])
    return files, labels, list(class_names)
