"""Continuing interrupted work: which run or sweep directory to reuse, which checkpoint to load, which jobs are done.

``resume=true`` reruns a command in the newest run directory made by the same overrides, and
``skip_done=true`` reruns a sweep in the newest sweep directory made by the same sweep overrides;
both choices are made by the OmegaConf resolvers below, used by ``hydra.run.dir`` and
``hydra.sweep.dir`` (configs/hydra/default.yaml). Cached resolvers: every later resolution, in a
sweep's jobs or Lightning's DDP launcher, gives the same directory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from gnr650.errors import UserError, reporting_user_errors

log = logging.getLogger(__name__)

LAST = "last.ckpt"
# Overrides that say how to run, not what: a run continued with them is the same run.
HOW_TO_RUN = ("resume", "skip_done", "ckpt_path")


class ResumeError(RuntimeError, UserError):
    """There is nothing consistent to resume from; the message names the directory or checkpoint."""


def _key(override: str) -> str:
    """The config key an override sets (``+a.b=1`` and ``~a.b`` set ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def comparable(overrides: Iterable[Any]) -> list[str]:
    """The overrides that define a run's result, normalised: the last value of each key, sorted, without
    Hydra's or the resume settings."""
    kept = {}
    for o in overrides:
        key = _key(str(o))
        if key not in HOW_TO_RUN and not key.startswith("hydra"):
            kept[key] = str(o).lstrip("+")
    return sorted(kept.values())


def differences(theirs: Iterable[str], ours: Iterable[str]) -> str:
    """``a=1 (was a=2), b=3 (new)``: how the overrides ``ours`` differ from ``theirs``."""
    old = {o.split("=", 1)[0].lstrip("~"): o for o in theirs}
    new = {o.split("=", 1)[0].lstrip("~"): o for o in ours}
    return ", ".join(
        [f"{new[k]} (was {old[k]})" if k in old else f"{new[k]} (new)" for k in new if new[k] != old.get(k)]
        + [f"{old[k]} (dropped)" for k in old if k not in new]
    )


def _read_overrides(path: Path, task_key: bool) -> list[str] | None:
    try:
        data = yaml.safe_load(path.read_text())
        return list((data["hydra"]["overrides"]["task"]) if task_key else data)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _newest_match(parent: Path, marker: str, overrides: Iterable[Any], task_key: bool) -> Path | None:
    """The newest ``parent/*`` whose ``marker`` file records the same ``comparable`` overrides."""
    wanted = comparable(overrides)
    found = [
        p
        for p in parent.glob(f"*/{marker}")
        if (o := _read_overrides(p, task_key)) is not None and comparable(o) == wanted
    ]
    newest = max(found, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parents[len(Path(marker).parts) - 1] if newest else None


def run_dir(resume: Any, overrides: Iterable[Any], default: str) -> str:
    """``hydra.run.dir``: ``resume=<dir>`` is that dir; ``resume=true`` the newest run with these overrides."""
    if resume in (None, False):
        return default
    if resume is not True:
        path = Path(str(resume)).expanduser()
        if path.is_file():
            raise ResumeError(
                f"resume={resume} is a file: resume takes a run directory; start from a checkpoint "
                "file with ckpt_path=<file>."
            )
        if not path.is_dir():
            raise ResumeError(f"resume={resume}: no such run directory.")
        return str(path.resolve())
    found = _newest_match(Path(default).parent, ".hydra/overrides.yaml", overrides, task_key=False)
    return str(found.resolve()) if found else default


def sweep_dir(skip_done: Any, overrides: Iterable[Any], default: str) -> str:
    """``hydra.sweep.dir``: with ``skip_done=true``, the newest sweep launched with the same overrides."""
    if not skip_done:
        return default
    found = _newest_match(Path(default).parent, "multirun.yaml", overrides, task_key=True)
    return str(found.resolve()) if found else default


def _python() -> str:
    """How the user can start this interpreter: its name when that is what PATH finds, else its full path."""
    name = os.path.basename(sys.executable)
    found = shutil.which(name)
    return name if found and os.path.abspath(found) == os.path.abspath(sys.executable) else sys.executable


def continue_command(argv: Sequence[str], multirun: bool) -> str:
    """The command that continues an interrupted run or sweep (README, "When a run or a sweep dies"): the same
    command line ``argv`` plus ``resume=true``, or for a sweep's job plus ``skip_done=true``. A command that
    already names the run to resume (``resume=<run dir>``) is itself the command."""
    key = "skip_done" if multirun else "resume"
    given = [a for a in argv[1:] if _key(a) == key]
    if given and given[-1].split("=", 1)[-1].lower() not in ("true", "false"):
        return shlex.join([_python(), *argv])
    return shlex.join([_python(), argv[0], *(a for a in argv[1:] if _key(a) != key), f"{key}=true"])


def _reported(fn: Callable[..., str]) -> Callable[..., str]:
    """Hydra resolves the run and sweep directories before the task starts, where it would print a UserError
    (``resume=<missing dir>``) with pages of traceback: report it there as the entry points do."""

    @functools.wraps(fn)
    def resolver(*args: Any) -> str:
        with reporting_user_errors(os.path.basename(sys.argv[0])):
            return fn(*args)

    return resolver


def register_resolvers() -> None:
    """``gnr650.run_dir`` / ``gnr650.sweep_dir``, used by configs/hydra/default.yaml: call before Hydra composes."""
    for name, fn in (("gnr650.run_dir", run_dir), ("gnr650.sweep_dir", sweep_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, _reported(fn), use_cache=True)


def checkpoint_to_resume(
    directory: Path, ckpt_path: str | None, resume: Any, skip_done: bool
) -> tuple[str | None, bool]:
    """The checkpoint ``trainer.fit`` continues from, and whether it must come from a run with the same overrides.

    An explicit ``ckpt_path`` is taken as it is; ``resume`` (and ``skip_done`` for a job that did not
    finish) continue from ``last.ckpt`` in the run's checkpoint ``directory``, or start afresh without one.
    """
    if ckpt_path:
        return str(ckpt_path), False
    if not (resume or skip_done):
        return None, True
    for tmp in directory.glob(".*.tmp") if directory.is_dir() else []:
        tmp.unlink(missing_ok=True)  # left by a write that a kill interrupted; the previous file is intact
    last = directory / LAST
    if last.is_file():
        log.info("Resuming from %s", last)
        return str(last), True
    # Expected for a sweep job that never started; worth a warning when resume=true was asked for.
    log.log(
        logging.WARNING if resume else logging.INFO,
        "Nothing to resume in %s (no %s): training from the start.",
        directory,
        LAST,
    )
    return None, True


def completed_results(output_dir: Path, overrides: Iterable[Any]) -> dict[str, Any] | None:
    """``skip_done``: the job's results.json if it completed with these overrides, else None (run the job)."""
    path = output_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("status") != "completed" or not results.get("metrics"):
        return None
    if comparable(results.get("overrides", [])) != comparable(overrides):
        log.warning("%s completed with other overrides (%s); running this job again.", path, results.get("overrides"))
        return None
    return results
