"""Evaluate a finished run on its own data or another data set with the classes it was trained on: the same
final evaluation as training's (every split, eval mode, no augmentation), written to eval_results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from gnr650.data import DecodedImageDataModule
from gnr650.errors import UserError, reporting_user_errors
from gnr650.files import write_json
from gnr650.inference.trained_run import TrainedRun, load_run
from gnr650.runs import evaluation_fields, versions
from gnr650.runs.run_dirs import hydra_files, removed_when_unused
from gnr650.training import ClassificationModule
from gnr650.training.precision import FP32, resolve_precision

log = logging.getLogger(__name__)


class ClassMismatchError(ValueError, UserError):
    """The data's classes are not the run's (names or order); the message lists both."""


def check_classes(run_classes: list[str], data_classes: list[str]) -> None:
    if list(run_classes) != list(data_classes):
        same = sorted(run_classes) == sorted(data_classes)
        raise ClassMismatchError(
            f"The data's classes {list(data_classes)} are not the run's classes {list(run_classes)}"
            + (" (the same names in another order)." if same else ".")
            + " Evaluate on data with the run's classes as class folders, e.g. dataset=imagefolder "
            "dataset.root=<folder with one sub-folder per class named as the run's>."
        )


def evaluate(
    run: TrainedRun, dm: DecodedImageDataModule, accelerator: str = "auto", precision: str | int | None = None
) -> dict[str, Any]:
    """Metrics of ``run`` on every split of ``dm``, with the keys of results.json; classes checked before."""
    dm.setup()
    check_classes(run.class_names, dm.class_names)
    module = ClassificationModule(run.net, run.preprocess, run.class_names, trainable=[], head=run.built.head)
    requested = precision if precision is not None else run.config.trainer.get("precision", FP32)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=resolve_precision(requested, accelerator, run.net)[0],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=dm, verbose=False)
    return {
        "run_dir": str(run.run_dir.resolve()),
        "checkpoint": str(run.checkpoint),
        "dataset": dm.name,
        "data": {"sizes": dm.summary(), "classes": dm.class_names},
        **evaluation_fields(module.final_results),
        "versions": versions(),
    }


def run_dataset(run: TrainedRun, cfg: DictConfig) -> DictConfig:
    """The data set to evaluate on: ``cfg.dataset`` when a group was chosen, else the run's own (same split
    seed); ``cfg.seed`` null means the run's seed."""
    if cfg.get("dataset") is None:
        return run.config.dataset
    with open_dict(cfg):
        if cfg.seed is None:
            cfg.seed = run.config.seed
    return cfg.dataset


def hydra_task(cfg: DictConfig) -> dict[str, Any]:
    """What ``eval.py`` runs: a UserError is its message alone and exit status 2, and leaves no output
    directory (nor the ``<run>/eval`` folders Hydra made for a mistyped ``run``)."""
    out = Path(cfg.paths.output_dir)
    with reporting_user_errors("eval.py"), removed_when_unused(out, hydra_files(out), top=Path(cfg.run).absolute()):
        return evaluate_run(cfg)


def evaluate_run(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.run``, evaluate, write ``<output dir>/eval_results.json``."""
    start = time.perf_counter()
    run = load_run(cfg.run)
    dm: DecodedImageDataModule = instantiate(run_dataset(run, cfg), eval_batch_size=cfg.eval_batch_size)
    results = evaluate(run, dm, cfg.accelerator, cfg.get("precision"))
    results["config"] = OmegaConf.to_container(cfg, resolve=False)
    results["timing"] = {"total_s": round(time.perf_counter() - start, 3)}
    path = write_json(Path(cfg.paths.output_dir) / "eval_results.json", results)
    metrics = results["metrics"]
    log.info(
        "Accuracy train %.4f, val %.4f, test %.4f on %s -> %s",
        metrics["train/acc"],
        metrics["val/acc"],
        metrics["test/acc"],
        dm.name,
        path,
    )
    return results
