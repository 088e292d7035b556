"""Summarise a Hydra multirun: `python scripts/summarize.py <multirun_dir>` (same as `gnr650-summarize`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnr650.summary.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
