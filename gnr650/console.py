"""Log records on a console where a progress bar is drawn: each record on a line of its own, never appended to the
bar's line (Lightning's bars redraw one line in place; a plain stream handler writes after whatever the line holds)."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class ConsoleHandler(logging.Handler):
    """Writes each record to ``sys.stdout`` as it is at that moment, with ``tqdm.write``: a live tqdm bar is cleared
    and drawn again below the record, and while rich's live bar runs ``sys.stdout`` is rich's proxy, which prints the
    record above the bar. (A ``StreamHandler`` keeps the stream it was given, bypassing both; tqdm's own logging
    handler does too.) The console handler of configs/hydra/job_logging/gnr650.yaml."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:
            self.handleError(record)
