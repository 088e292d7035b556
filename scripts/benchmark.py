"""Framework vs plain PyTorch loop benchmark: `python scripts/benchmark.py [overrides] [--mode run]` (same as
`gnr650-bench`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnr650.tools.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
