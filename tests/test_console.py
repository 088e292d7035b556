"""The console a person reads: what the entry points import before ``--help`` answers, and a real terminal's output of
a run (log lines never on a bar's line, the final evaluations named per split, one storage line)."""

import io
import logging
import re
import subprocess
import sys

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress
from tqdm import tqdm

from gnr650.console import ConsoleHandler
from tests.helpers import CONFIG_DIR, ROOT

# Imports that take seconds: `train.py --help` and `eval.py --help` need none of them.
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "timm", "torchvision", "matplotlib")


def test_the_entry_points_import_nothing_heavy_before_their_task_runs():
    """Everything train.py and eval.py run at import (all that ``--help`` runs: their imports, ``prepare_process``
    and the Hydra decorator) leaves torch, Lightning and timm unimported; the task imports them when it runs."""
    code = (
        "import runpy, sys\n"
        "for script in ('train.py', 'eval.py'):\n"
        "    runpy.run_path(script, run_name='imported')\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def log_format() -> str:
    """The console's record format (configs/hydra/job_logging/gnr650.yaml)."""
    return yaml.safe_load((CONFIG_DIR / "hydra" / "job_logging" / "gnr650.yaml").read_text())["formatters"]["simple"][
        "format"
    ]


RECORD_START = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[")  # "[2026-01-31 12:00:00,123][" of log_format
CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def glued_lines(raw: str) -> list[str]:
    """The terminal lines of ``raw`` on which a log record starts after other text (a bar's frame): each line as the
    screen shows it, the text after its last carriage return (every bar frame starts with one) without control
    sequences."""
    lines = (CONTROL_SEQUENCE.sub("", line.split("\r")[-1]) for line in raw.replace("\r\n", "\n").split("\n"))
    return [line for line in lines if (m := RECORD_START.search(line)) and m.start() > 0]


def _console_logger(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(logging.Formatter(log_format()))
    logger = logging.getLogger("tests.console")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger


@pytest.mark.parametrize("bar", ["rich", "tqdm"])
def test_a_record_logged_while_a_bar_is_drawn_gets_a_line_of_its_own(bar, monkeypatch):
    """The terminal (``sys.stdout``, also the bar's stream) as the bars draw on it: rich's live bar (Lightning's
    RichProgressBar) and a tqdm bar (its TQDMProgressBar); the record must not land on the bar's line."""
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    logger = _console_logger(ConsoleHandler())
    if bar == "rich":
        with Progress(console=Console(file=terminal, force_terminal=True, width=100)) as progress:
            task = progress.add_task("Epoch 1/2", total=4)
            progress.update(task, advance=2)
            progress.refresh()
            logger.info("Epoch 1/2: train loss 1.0 acc 50.00%")
            progress.update(task, advance=2)
    else:
        with tqdm(total=4, desc="Epoch 1/2", file=terminal) as progress:
            progress.update(2)
            logger.info("Epoch 1/2: train loss 1.0 acc 50.00%")
            progress.update(2)
    raw = terminal.getvalue()
    assert ("━" if bar == "rich" else "4/4") in raw  # the bar was drawn (to its end)
    assert raw.count("Epoch 1/2: train loss 1.0 acc 50.00%") == 1
    assert glued_lines(raw) == []
