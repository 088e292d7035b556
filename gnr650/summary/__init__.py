"""Summary of a multirun: tables, figures and an HTML report written into the sweep directory.

Entry points: `write_summary(dir)` (library), `gnr650-summarize DIR` (CLI, `cli.main`)
and `SummaryCallback` (Hydra, on_multirun_end).
"""

from gnr650.summary.collect import Job, collect_jobs
from gnr650.summary.hydra_callback import SummaryCallback
from gnr650.summary.writer import Summary, write_summary

__all__ = ["Job", "Summary", "SummaryCallback", "collect_jobs", "write_summary"]
