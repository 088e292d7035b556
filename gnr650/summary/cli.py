"""`gnr650-summarize MULTIRUN_DIR...`: (re)write the summary of finished or interrupted sweeps."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gnr650.errors import reporting_user_errors
from gnr650.summary import tables
from gnr650.summary.writer import write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gnr650-summarize",
        description="Collect each job's results.json under a Hydra multirun directory and write "
        "summary.md/.csv/.json, comparison figures and report.html into it.",
    )
    parser.add_argument("multirun_dirs", nargs="+", type=Path, metavar="MULTIRUN_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    status = 0
    for directory in args.multirun_dirs:
        if not directory.is_dir():
            parser.error(f"not a directory: {directory}")
        with reporting_user_errors(parser.prog):
            summary = write_summary(directory)
        if not summary.jobs:
            print(f"{directory}: no jobs found (no .hydra/overrides.yaml or results.json below it)")
            status = 1
            continue
        print(tables.markdown(summary.table))
        print(f"\n{len(summary.jobs)} jobs, {len(summary.failed)} failed or unfinished; wrote:")
        print("\n".join(f"  {path}" for path in summary.files))
    return status
