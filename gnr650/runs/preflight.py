"""Checks that fail before any work, with a message naming the setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from gnr650.files import ensure_writable


class PreflightError(ValueError):
    """The configuration or the environment cannot work; the message says which setting to change."""


def check_writable(directory: str | Path) -> None:
    """The output directory exists (or can be made) and takes files."""
    try:
        ensure_writable(directory)
    except OSError as e:
        raise PreflightError(
            f"Output directory '{directory}' is not writable ({e.strerror or e}). Point hydra.run.dir "
            "(hydra.sweep.dir for sweeps) or paths.log_dir at a writable folder."
        ) from e


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problems(key: str, default, value) -> list[str]:
    """A number replaced by a non-number (or a whole number by a fraction), also inside lists."""
    if isinstance(default, ListConfig) and isinstance(value, ListConfig) and len(default) == len(value):
        return [p for i, (d, v) in enumerate(zip(default, value)) for p in _type_problems(f"{key}[{i}]", d, v)]
    if not _is_number(default) or value is None:
        return []
    if not _is_number(value):
        return [f"{key}={value!r} should be a number (default {default!r})"]
    if isinstance(default, int) and not float(value).is_integer():
        return [f"{key}={value!r} should be a whole number (default {default!r})"]
    return []


def check_override_types(cfg: DictConfig) -> None:
    """Command-line values must have the type of the default they replace (``per_class=abc`` is refused).

    The defaults are those of the same config-group choices, composed again without the value
    overrides; only possible inside a Hydra app (``train.py``), elsewhere nothing is checked.
    """
    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return
    from hydra import compose

    hydra_cfg = HydraConfig.get()
    groups = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    try:
        base = compose(hydra_cfg.job.config_name, overrides=[f"{k}={v}" for k, v in groups.items()])
    except Exception:  # defaults that cannot be rebuilt on their own: check nothing rather than refuse the run
        return
    problems = []
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if key in groups or key.startswith("hydra") or override.is_delete():
            continue
        default = OmegaConf.select(base, key, default=None, throw_on_missing=False)
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        problems += _type_problems(key, default, value)
    if problems:
        raise PreflightError("Invalid override: " + "; ".join(problems) + ".")


def check_launch(trainer: pl.Trainer) -> None:
    """Lightning's DDP launcher re-runs the command line once per extra rank; inside a local sweep each
    rank would run the whole sweep."""
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    if (
        isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise PreflightError(
            "trainer=ddp with processes started by Lightning cannot run inside a local multirun (-m): Lightning "
            "starts each rank by re-running the command line, sweep included. Run the jobs one at a time, or "
            "sweep on a cluster with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>."
        )
