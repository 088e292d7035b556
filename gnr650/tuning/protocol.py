"""``protocol=tuned``: each strategy at its own best learning rate, chosen on the validation split alone.

A grid, not Optuna: a handful of trials per strategy (5 by default) is too few for a sampler to learn from, and a
grid gives every strategy the same budget and the same choices, so the comparison stays fair and repeatable.
Each trial trains the strategy with both of its learning rates (``optimizer.lr_head`` and ``lr_backbone``, from its
recipe) times one scale of ``tune.lr_scales``, and is evaluated on train and val only: the test split is never
evaluated, so nothing the choice reads depends on a test label. The scale with the best validation accuracy (ties:
the one nearest the recipe's) then trains once per seed of ``tune.seeds``, evaluated on all three splits.

The job's results.json holds the trials, the choice, each seed's results and the mean metrics over seeds with a
95% t-interval of the test accuracy; the seeds' and trials' own run directories sit under ``seeds/`` and ``trials/``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gnr650.data import SPLITS
from gnr650.errors import UserError, user_error
from gnr650.runs import completed_results, provenance, versions, write_results
from gnr650.summary.significance import t_interval

log = logging.getLogger(__name__)

SEARCH_SPLITS = ("train", "val")  # what a trial is evaluated on: never the test split


def trial_config(cfg: DictConfig, scale: float, out: Path) -> DictConfig:
    """``cfg`` for one trial: learning rates times ``scale``, only ``tune.trial_callbacks``, no tuning, into ``out``."""
    child = _child(cfg, out)
    with open_dict(child):
        child.optimizer.lr_head = float(cfg.optimizer.lr_head) * scale
        child.optimizer.lr_backbone = float(cfg.optimizer.lr_backbone) * scale
        kept = set(cfg.tune.trial_callbacks)
        child.callbacks = {k: v for k, v in (cfg.get("callbacks") or {}).items() if k in kept} or None
    return child


def seed_config(cfg: DictConfig, scale: float, seed: int, out: Path) -> DictConfig:
    """``cfg`` for one final run: the chosen scale, ``seed``, the job's own callbacks, into ``out``."""
    child = trial_config(cfg, scale, out)
    with open_dict(child):
        child.seed = seed
        child.callbacks = cfg.get("callbacks")
    return child


def _child(cfg: DictConfig, out: Path) -> DictConfig:
    child = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(child):
        child.tune = None
        child.paths.output_dir = str(out)
        child.resume = False
        child.ckpt_path = None
        child.skip_done = False
    return child


def choose(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The completed trial with the best validation accuracy; ties go to the scale nearest 1 (the recipe's)."""
    done = [t for t in trials if t["status"] == "completed"]
    if not done:
        raise TuningError(
            "Every trial of the learning-rate search failed (see trials/*/results.json): widen or move "
            "tune.lr_scales, or check the strategy's recipe (configs/recipe/)."
        )
    return min(done, key=lambda t: (-t["val_acc"], abs(math.log(t["lr_scale"]))))


def edge_warning(chosen: float, scales: list[float]) -> list[str]:
    """A choice at the end of the grid may be short of the best rate: say so, and how to look further."""
    if len(scales) < 2 or min(scales) < chosen < max(scales):
        return []
    end = "largest" if chosen == max(scales) else "smallest"
    return [
        f"The chosen learning rate is the {end} of the grid (x{chosen:g} of tune.lr_scales={scales}): the best may lie "
        f"beyond it; widen tune.lr_scales past x{chosen:g}."
    ]


class TuningError(RuntimeError, UserError):
    """The search could not choose a learning rate, or its settings cannot work."""


def check_tune(tune: DictConfig) -> None:
    """``tune.lr_scales`` positive numbers and ``tune.seeds`` not empty, before any run."""
    if not tune.lr_scales or any(s <= 0 for s in tune.lr_scales):
        raise TuningError(f"tune.lr_scales={list(tune.lr_scales)}: give one or more positive scales, e.g. [0.1,1,10].")
    if not tune.seeds:
        raise TuningError("tune.seeds=[]: give the seeds to train at the chosen rate, e.g. [0,1,2].")


def tuned_train(cfg: DictConfig, train: Callable[..., dict[str, Any]], overrides: list[str]) -> dict[str, Any]:
    """Search ``tune.lr_scales`` on val (``train(child, evaluate=SEARCH_SPLITS)``), then train ``tune.seeds`` at the
    best; returns the job's results, also written to its results.json (``status: failed`` and the error if it
    fails, then re-raised)."""
    check_tune(cfg.tune)
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    results: dict[str, Any] = {"status": "running", "error": None, "finetune": cfg.finetune.get("name")}
    try:
        results = _search_then_seeds(
            cfg, partial(_train_once, train, overrides, bool(cfg.get("skip_done"))), out, start
        )
    except BaseException as e:
        cause = user_error(e) or e
        results |= {"status": "failed", "error": f"{type(cause).__name__}: {cause}", "warnings": []}
        results["timing"] = {"fit_s": None, "total_s": round(time.perf_counter() - start, 3)}
        raise
    finally:
        results |= {
            "overrides": overrides,
            "run_dir": str(out.resolve()),
            "versions": versions(),
            "provenance": provenance(),
            "config": OmegaConf.to_container(cfg, resolve=False),
        }
        write_results(out / "results.json", results)
    test = results["tuned"]["test_acc"]
    log.info(
        "Tuned %s: lr x%g, test accuracy %.4f (95%% interval %s over %d seeds) -> %s",
        results["finetune"],
        results["tuned"]["chosen"]["lr_scale"],
        test["mean"],
        f"{test['low']:.4f}-{test['high']:.4f}" if test["low"] is not None else "none",
        test["n"],
        out / "results.json",
    )
    return results


def _train_once(
    train: Callable[..., dict[str, Any]], overrides: list[str], skip_done: bool, child: DictConfig, **kwargs: Any
) -> dict[str, Any]:
    """``train(child)``; with ``skip_done``, a trial or seed that completed before (a killed job run again) is read
    back instead."""
    out = Path(child.paths.output_dir)
    done = completed_results(out, overrides) if skip_done else None
    if done is not None:
        log.info("skip_done: %s already completed; not training it again.", out)
        return done
    return train(child, **kwargs)


def _search_then_seeds(
    cfg: DictConfig, train: Callable[..., dict[str, Any]], out: Path, start: float
) -> dict[str, Any]:
    trials = []
    # The recipe's own rates first (the scale nearest 1): a strategy that trains nothing stops after it.
    for scale in sorted(cfg.tune.lr_scales, key=lambda s: abs(math.log(s))):
        trial_dir = out / "trials" / f"lr_x{scale:g}"
        trial_cfg = trial_config(cfg, float(scale), trial_dir)
        record = {
            "lr_scale": float(scale),
            "lr_head": trial_cfg.optimizer.lr_head,
            "lr_backbone": trial_cfg.optimizer.lr_backbone,
            "run_dir": str(trial_dir.relative_to(out)),
        }
        log.info("Trial lr x%g (head %g, backbone %g)", scale, record["lr_head"], record["lr_backbone"])
        try:
            results = train(trial_cfg, evaluate=SEARCH_SPLITS)
        except Exception as error:
            if user_error(error) is None:
                raise  # a bug or an interruption stops the job; a trial that cannot work (diverged) does not
            log.warning("Trial lr x%g failed (%s); the search goes on.", scale, user_error(error))
            trials.append(record | {"status": "failed", "val_acc": None, "fit_s": None})
            continue
        trials.append(
            record
            | {"status": "completed", "val_acc": results["metrics"]["val/acc"], "fit_s": results["timing"]["fit_s"]}
        )
        if results["params"]["trainable"] == 0:
            log.info("finetune=%s trains nothing: no learning rate to search.", cfg.finetune.name)
            break
    trials.sort(key=lambda t: t["lr_scale"])
    search_s = time.perf_counter() - start
    chosen = choose(trials)
    log.info("Chosen: lr x%g (val acc %.4f); training seeds %s", chosen["lr_scale"], chosen["val_acc"], cfg.tune.seeds)
    runs = []
    for seed in cfg.tune.seeds:
        seed_dir = out / "seeds" / f"seed_{seed}"
        results = train(seed_config(cfg, chosen["lr_scale"], int(seed), seed_dir))
        runs.append({**results, "seed": int(seed), "run_dir": str(seed_dir.relative_to(out))})
    return _job_results(cfg, trials, chosen, runs, search_s, time.perf_counter() - start)


def _job_results(
    cfg: DictConfig,
    trials: list[dict[str, Any]],
    chosen: dict[str, Any],
    runs: list[dict[str, Any]],
    search_s: float,
    total_s: float,
) -> dict[str, Any]:
    first = runs[0]
    metrics = {key: statistics.fmean(run["metrics"][key] for run in runs) for key in first["metrics"]}
    test = [run["metrics"]["test/acc"] for run in runs]
    bounds = t_interval(test)
    per_class = {
        split: {c: statistics.fmean(run["per_class"][split][c] for run in runs) for c in first["per_class"][split]}
        for split in SPLITS
    }
    fits = [run["timing"]["fit_s"] for run in runs]
    return {
        **{
            k: first[k]
            for k in ("dataset", "model", "finetune", "data", "params", "trainable_modules", "precision", "epochs")
        },
        "status": "completed",
        "error": None,
        "seed": [run["seed"] for run in runs],
        "warnings": edge_warning(chosen["lr_scale"], [float(s) for s in cfg.tune.lr_scales])
        + [f"seed {run['seed']}: {w}" for run in runs for w in run["warnings"]],
        "metrics": metrics,
        "per_class": per_class,
        "tuned": {
            "lr_scales": [float(s) for s in cfg.tune.lr_scales],
            "trials": trials,
            "chosen": {k: chosen[k] for k in ("lr_scale", "lr_head", "lr_backbone", "val_acc")},
            "seeds": [{"seed": run["seed"], "run_dir": run["run_dir"], "metrics": run["metrics"]} for run in runs],
            "test_acc": {
                "mean": statistics.fmean(test),
                "std": statistics.stdev(test) if len(test) > 1 else None,
                "low": bounds[0] if bounds else None,
                "high": bounds[1] if bounds else None,
                "n": len(test),
            },
            "search_s": round(search_s, 3),
        },
        "timing": {"fit_s": round(sum(fits), 3), "total_s": round(total_s, 3)},
        "throughput": _mean_or_none([run.get("throughput") for run in runs]),
        "peak_memory": max((run.get("peak_memory") or 0.0) for run in runs) or None,
    }


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None
