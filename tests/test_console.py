"""The console a person reads: what the entry points import before ``--help`` answers, and a real terminal's output of
a run (log lines never on a bar's line, the final evaluations named per split, one storage line)."""

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress
from tqdm import tqdm

from gnr650.console import ConsoleHandler
from tests.helpers import CONFIG_DIR, ROOT, tiny_overrides

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


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 600) -> str:
    """``train.py args`` with a pseudo-terminal (160 columns) as stdin, stdout and stderr, as a user runs it: the bars
    are drawn live (on a pipe rich draws nothing until the end). Returns everything written to the terminal."""
    cwd.mkdir(parents=True, exist_ok=True)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"paths.root_dir={cwd}"],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    out = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=30) == 0, out[-3000:]
    return out


@pytest.mark.slow  # a two-job sweep of train.py processes (~30 s here)
def test_a_sweep_on_a_terminal_reads_cleanly(fake_data, tmp_path):
    """Log lines (epoch lines, the exports' lines at the final evaluation, Lightning's) each on a line of their own
    while bars are drawn; epochs counted from 1 on the bar; the final evaluation named per split; one storage line
    per job; the summary step announced."""
    raw = run_in_terminal(
        ["-m", "seed=0,1"]
        + tiny_overrides("eurosat", fake_data)
        + ["model=resnet18", "callbacks=resnet_exports", "trainer.max_epochs=2", "trainer.enable_progress_bar=true"],
        tmp_path,
    )
    assert glued_lines(raw) == []
    frames = CONTROL_SEQUENCE.sub("", raw).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records = [line for line in frames if RECORD_START.match(line)]
    bars = [line for line in frames if "━" in line and not RECORD_START.match(line)]
    # Records logged while a bar was live: each epoch's line, and the exports' at the final evaluation.
    assert sum(": train loss " in r for r in records) == 4 and sum("KernelNormExport end" in r for r in records) == 2
    labels = {b.split(" ━")[0].strip() for b in bars} - {"Validation"}  # a one-batch validation may go undrawn
    assert labels == {"Epoch 1/2", "Epoch 2/2", "Evaluating train", "Evaluating val", "Evaluating test"}
    assert sum("][INFO] - Storage: " in r for r in records) == 2  # one per job
    (announced,) = [i for i, r in enumerate(records) if "Writing the summary of 2 jobs to " in r]
    (written,) = [i for i, r in enumerate(records) if "Summary of 2 jobs written in " in r]
    assert announced < written
