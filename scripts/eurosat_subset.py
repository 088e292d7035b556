"""A class-balanced EuroSAT subset as one zip, for a machine that the whole 134 MB set cannot be sent to.

    python scripts/eurosat_subset.py <data dir> eurosat_subset.zip --per-class 800
    unzip -q eurosat_subset.zip -d <other data dir>      # then GNR650_DATA_DIR=<other data dir>

The zip holds ``eurosat/2750/<Class>/<Class>_N.jpg`` (the layout ``dataset=eurosat`` reads) for the
first ``--per-class`` images of each class in numeric order, stored uncompressed (JPEGs do not shrink).
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path


def _number(path: Path) -> int:
    match = re.search(r"_(\d+)$", path.stem)
    return int(match.group(1)) if match else -1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path, help="folder holding eurosat/2750/<Class>/")
    p.add_argument("out", type=Path, help="zip file to write")
    p.add_argument("--per-class", type=int, required=True, help="images kept per class")
    args = p.parse_args(argv)
    root = args.data_dir / "eurosat" / "2750"
    classes = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        p.error(f"no class folders in {root}: give the data dir that holds eurosat/2750/<Class>/*.jpg")
    if args.per_class < 1:
        p.error("--per-class must be at least 1")
    with zipfile.ZipFile(args.out, "w", compression=zipfile.ZIP_STORED) as z:
        for folder in classes:
            files = sorted(folder.glob("*.jpg"), key=_number)[: args.per_class]
            if len(files) < args.per_class:
                print(f"{folder.name}: only {len(files)} images", file=sys.stderr)
            for f in files:
                z.write(f, f.relative_to(args.data_dir).as_posix())
    print(
        f"{args.out}: {len(classes)} classes x up to {args.per_class} images, {args.out.stat().st_size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
