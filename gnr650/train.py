"""``train(cfg)``: build everything from a composed config, fit, evaluate every split, write results.json."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from gnr650.data import SPLITS, DecodedImageDataModule
from gnr650.data.images import oversized_warning
from gnr650.errors import full_tracebacks, reporting_user_errors, user_error
from gnr650.finetune import StrategyError, count_params, feature_cache, prepare_from_config
from gnr650.finetune.knn import KNNBank, KNNClassifier
from gnr650.finetune.strategies import check_lp_epochs
from gnr650.interpret.callbacks import weights_epoch
from gnr650.interpret.index import artifacts_dir
from gnr650.interpret.learning_curves import export_learning_curves
from gnr650.interpret.predictions import save_test_predictions
from gnr650.models import BuiltModel
from gnr650.runs import (
    RunInterrupted,
    check_launch,
    check_writable,
    completed_results,
    evaluation_fields,
    provenance,
    run_control,
    versions,
    write_results,
)
from gnr650.runs.history import write_history
from gnr650.runs.resume import continue_command
from gnr650.runs.run_dirs import hydra_files, removed_when_unused
from gnr650.runs.trackers import instantiate_loggers, log_run_files
from gnr650.summary.run_report import write_run_report
from gnr650.training import ClassificationModule, DevicePreprocess, epoch_progress_bar, use_channels_last
from gnr650.training.head_grid import HeadGridModule
from gnr650.training.learning import learning_warnings
from gnr650.training.optim import check_algorithm
from gnr650.training.precision import FP32, resolve_precision
from gnr650.training.progress import EpochLog
from gnr650.tuning import tuned_train

log = logging.getLogger(__name__)


def instantiate_list(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict or list node; ``null`` or empty gives ``[]``."""
    if not node:
        return []
    items = node.values() if isinstance(node, DictConfig) else node
    return [instantiate(item) for item in items if item is not None and "_target_" in item]


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is None:
        return None
    return getattr(ckpt, "best_model_path", None) or getattr(ckpt, "last_model_path", None) or None


def _checkpoint_dir(callbacks: list[Any], output_dir: Path) -> Path:
    """Where the run's checkpoints go: the configured ModelCheckpoint's ``dirpath``, else
    ``<output_dir>/checkpoints``."""
    return next(
        (Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), output_dir / "checkpoints"
    )


def build(cfg: DictConfig) -> tuple[DecodedImageDataModule, BuiltModel, ClassificationModule]:
    """Data first (cheap to check), then the model, the strategy and the LightningModule."""
    check_lp_epochs(cfg.finetune.get("lp_epochs"), cfg.trainer.get("max_epochs"))
    dm: DecodedImageDataModule = instantiate(cfg.dataset)
    dm.setup()
    built: BuiltModel = instantiate(cfg.model, num_classes=dm.num_classes)
    oversized = oversized_warning(dm.split("train").images.shape[-2:], built.img_size, dm.storage.decode_size)
    if oversized:
        log.warning(oversized)
    ft = OmegaConf.to_container(cfg.finetune, resolve=True)
    strategy = prepare_from_config(built, ft)
    mean, std = (built.mean, built.std) if built.mean is not None else dm.channel_stats()
    channels_last = use_channels_last(
        cfg.get("channels_last", "auto"), cfg.trainer.get("accelerator", "auto"), built.net
    )
    if channels_last:
        built.net.to(memory_format=torch.channels_last)
    if cfg.get("compile", False):
        built.net.compile()
    preprocess = DevicePreprocess(
        mean,
        std,
        img_size=built.img_size,
        augment=dm.augment,
        crop_padding=dm.crop_padding,
        channels_last=channels_last,
    )
    if ft.get("head_grid") and (
        ft["train_blocks"] != 0 or not ft.get("train_head", True) or len(strategy.trainable) > len(built.head)
    ):
        raise StrategyError(
            f"finetune.head_grid=true trains linear heads on frozen features: use it with finetune=last "
            f"(got finetune={ft.get('name')})."
        )
    grid = (
        {"lrs": list(ft["head_grid_lrs"]), "weight_decays": list(ft["head_grid_weight_decays"])}
        if ft.get("head_grid")
        else {}
    )
    module = (partial(HeadGridModule, **grid) if grid else ClassificationModule)(
        built.net,
        preprocess,
        dm.class_names,
        strategy.trainable,
        built.head + strategy.new,  # the modules at lr_head: the head, and adapters or prompts
        **OmegaConf.to_container(cfg.optimizer, resolve=True),
        lr_scales=strategy.lr_scales,
        lp_epochs=ft.get("lp_epochs") or 0,
    )
    return dm, built, module


def input_spec(preprocess: DevicePreprocess, dm: DecodedImageDataModule) -> dict[str, Any]:
    """What a trained network expects, for predicting and exporting without the training data: the training
    images' decoded size (others are resized to it, as decoding does), the network's input size, normalisation."""
    data_size = list(dm.split("train").images.shape[-2:])
    return {
        "data_size": data_size,
        "input_size": [preprocess.img_size] * 2 if preprocess.img_size else data_size,
        "mean": preprocess.mean.flatten().tolist(),
        "std": preprocess.std.flatten().tolist(),
    }


def train(cfg: DictConfig, evaluate: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Run one experiment into ``cfg.paths.output_dir`` and return its results (also in results.json).

    ``evaluate``: the splits of the final evaluation (a learning-rate search leaves test out, gnr650.tuning).
    A failing run still writes results.json, with ``status: failed`` and the error, then re-raises.
    """
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    check_writable(out)
    check_algorithm(cfg.optimizer.algorithm)
    results: dict[str, Any] = {
        "status": "running",
        "error": None,
        "dataset": cfg.dataset.get("_target_", "").rsplit(".", 1)[-1],
        "model": cfg.model.get("name"),
        "finetune": cfg.finetune.get("name"),
        "seed": cfg.seed,
        "overrides": _overrides(),
        "run_dir": str(out.resolve()),
        "warnings": [],
    }
    try:
        pl.seed_everything(cfg.seed, workers=True)
        reset_peak_memory()
        loggers = instantiate_loggers(cfg.get("logger"))  # a missing tracker package fails before any work
        configured = instantiate_list(cfg.get("callbacks"))  # and so does a bad callback setting
        if not loggers and any(isinstance(c, LearningRateMonitor) for c in configured):
            # Lightning refuses a learning-rate monitor without a logger; with logger=none it has nowhere to write.
            log.info("logger=none: the learning-rate monitor is left out (it writes only to a logger).")
            configured = [c for c in configured if not isinstance(c, LearningRateMonitor)]
        dm, built, module = build(cfg)
        results["dataset"] = dm.name
        results["data"] = {"sizes": dm.summary(), "classes": dm.class_names}
        results["params"] = count_params(built.net)
        results["trainable_modules"] = module.trainable
        results["preprocess"] = input_spec(module.preprocess, dm)
        log.info(
            "%s on %s (%s), %s: %s trainable of %s parameters",
            built.name,
            dm.name,
            dm.summary(),
            cfg.finetune.name,
            f"{results['params']['trainable']:,}",
            f"{results['params']['total']:,}",
        )

        cache = feature_cache(
            cfg.finetune.get("cache_features", "auto"),
            cfg.finetune.get("cache_max_gb", 16.0),
            bool(cfg.get("compile", False)),
            dm,
            module,
        )
        control = run_control(
            _checkpoint_dir(configured, out),
            results["overrides"],
            loggers,
            cfg.get("resume"),
            bool(cfg.get("skip_done")),
            cfg.get("ckpt_path"),
            cfg.last_ckpt_every_s,
            checkpointing=cfg.trainer.get("enable_checkpointing", True),
            continue_with=continue_command(sys.argv, _multirun()),
        )
        for logger in loggers:  # after run_control: CSVHistory has read a resumed run's metrics.csv before it opens
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        epoch_log = EpochLog()
        dm.final_splits = tuple(evaluate)
        progress = [epoch_progress_bar(evaluate)] if cfg.trainer.get("enable_progress_bar", True) else []
        knn = cfg.finetune.get("knn")
        knn_bank = (
            KNNBank(built.head[-1], KNNClassifier(dm.num_classes, **knn), len(dm.split("train"))) if knn else None
        )
        callbacks = configured + [c for c in (cache, knn_bank) if c] + control.callbacks + [epoch_log] + progress
        precision, why = resolve_precision(
            cfg.trainer.get("precision", FP32), cfg.trainer.get("accelerator", "auto"), built.net
        )
        log.info("Precision %s (%s).", precision, why)
        results["precision"] = {"used": precision, "why": why}
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision
        )
        check_launch(trainer)
        results["resumed_from"] = control.ckpt_path
        fit_s, history = 0.0, None
        if results["params"]["trainable"] > 0:
            t0 = time.perf_counter()
            with control.fitting():
                trainer.fit(module, datamodule=dm, ckpt_path=control.ckpt_path, weights_only=True)
            fit_s = time.perf_counter() - t0
            history = write_history(out, loggers) if _is_global_zero() else None  # metrics.csv is complete now
            ckpt = _best_checkpoint(trainer)
        else:
            log.info("Strategy '%s' trains nothing: evaluating the model as loaded.", cfg.finetune.name)
            ckpt = None
        with control.reading(ckpt):
            trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
        if _is_global_zero() and module.test_predictions:
            if trainer.world_size == 1:
                save_test_predictions(out / "artifacts", module.test_predictions, weights_epoch(trainer))
            else:  # each rank saw a shard of the test split
                log.info("test_predictions.npz is not written under DDP (%d processes).", trainer.world_size)
        if history:  # rank 0's
            title = f"{results['model']} on {results['dataset']}, finetune={results['finetune']}: learning curves"
            export_learning_curves(artifacts_dir(out), history, weights_epoch(trainer), title)
        results.update(evaluation_fields(module.final_results))
        results["checkpoint"] = ckpt
        results["feature_cache"] = cache.summary if cache else None
        if isinstance(module, HeadGridModule):
            results["head_grid"] = {"settings": module.grid_results, "chosen": module.grid_results[module.best]}
        results["epochs"] = trainer.current_epoch
        if fit_s:  # fit ran (frozen and knn train nothing: frozen's chance accuracy is by design, not a warning)
            results["warnings"] = learning_warnings(
                results["metrics"]["train/acc"],
                # The whole run's epochs from history.csv (a resumed run's too); without a CSV logger, this process's.
                [e["train/loss"] for e in (history or epoch_log.epochs) if "train/loss" in e],
                dm.num_classes,
                _learning_rates(cfg, module),
            )
        results["timing"] = {"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - start, 3)}
        seen = module.images_seen * trainer.world_size
        results["throughput"] = round(seen / fit_s, 1) if seen and fit_s > 0 else None  # training images/s
        results["peak_memory"] = peak_memory_mb(trainer.strategy.root_device)
        results["status"] = "completed"
    except BaseException as e:
        cause = user_error(e) or e  # a constructor's UserError, not Hydra's wrapping of it
        results["status"] = "failed"
        results["error"] = f"{type(cause).__name__}: {cause}"
        results["timing"] = {"fit_s": None, "total_s": round(time.perf_counter() - start, 3)}
        raise
    finally:
        results["versions"] = versions()
        results["provenance"] = provenance()
        results["config"] = OmegaConf.to_container(cfg, resolve=False)
        if _is_global_zero():
            write_results(out / "results.json", results)
            _write_report(out)
    if _is_global_zero():  # the one rank that wrote it
        log_run_files(loggers, out)
        accuracies = ", ".join(f"{s} {results['metrics'][f'{s}/acc']:.4f}" for s in evaluate)
        log.info("Accuracy %s -> %s", accuracies, out / "results.json")
        for warning in results["warnings"]:
            log.warning(warning)
    return results


def _write_report(out: Path) -> None:
    """report.html beside results.json; a report bug must neither fail the run nor hide its own error."""
    try:
        write_run_report(out)
    except Exception:
        log.exception("Could not write %s; the results are in results.json", out / "report.html")


def _learning_rates(cfg: DictConfig, module: ClassificationModule) -> str:
    """The learning-rate settings the run trained with, as the overrides that change them."""
    if isinstance(module, HeadGridModule):
        chosen = module.settings[module.best]["lr"]
        return f"finetune.head_grid_lrs={list(cfg.finetune.head_grid_lrs)}, the chosen head's {chosen:g}"
    return f"optimizer.lr_head={cfg.optimizer.lr_head:g}, optimizer.lr_backbone={cfg.optimizer.lr_backbone:g}"


def reset_peak_memory() -> None:
    """Start this job's peak-memory count: jobs of a sweep share one process, whose own peak is the largest job's."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak resident set size
    except OSError:
        log.debug("Cannot reset the peak resident size; peak_memory is the process's since it started.")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since ``reset_peak_memory``, in MB: allocated on the GPU, else the peak resident size (CPU;
    the process's whole peak where Linux's VmHWM is not there to read)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**10, 1)  # kB
    import resource  # POSIX only, as is the CPU path it measures

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)  # Linux reports KiB


def _is_global_zero() -> bool:
    return pl.utilities.rank_zero_only.rank == 0


@contextmanager
def _reporting_interrupts(multirun: bool) -> Iterator[None]:
    """A signal that stopped training: one line on stderr (what was saved, the command that continues) and exit
    status 128 + the signal's number (SIGINT 130, SIGTERM 143); Ctrl-C outside training likewise."""
    try:
        yield
    except RunInterrupted as e:
        if _is_global_zero():
            print(e, file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt:
        then = f" Continue the sweep with: {continue_command(sys.argv, multirun)}" if multirun else ""
        print(f"Stopped by SIGINT outside training; no checkpoint was saved.{then}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None


def hydra_task(cfg: DictConfig) -> float | None:
    """What ``train.py`` runs; returns the metric Hydra sweepers optimise (``cfg.optimized_metric``).

    A UserError is its message alone and exit status 2 (``gnr650.errors``); a run it stops before writing
    anything leaves no run directory. A signal that stops training is one line and exit status 128 + its
    number, and stops a sweep too. In a multirun a failed job has written its failed results.json; it returns
    None instead of raising, because Hydra's sweeper would otherwise abort and skip the sweep summary.
    ``skip_done=true``: a job whose results.json completed with the same overrides is not trained again.
    """
    out = Path(cfg.paths.output_dir)
    run = partial(tuned_train, train=train, overrides=_overrides()) if cfg.get("tune") else train
    done = completed_results(out, _overrides()) if cfg.get("skip_done") else None
    if done is not None:
        log.info("skip_done: %s already completed; not training it again.", cfg.paths.output_dir)
        results = done
    elif _multirun():
        try:
            with _reporting_interrupts(multirun=True):
                results = run(cfg)
        except Exception as e:
            error = user_error(e)
            if error is not None and not full_tracebacks():
                log.error("Job failed (its results.json records the error; the sweep goes on): %s", error)
            else:
                log.exception("Job failed; its results.json records the error. The sweep goes on.")
            return None
    else:
        with (
            _reporting_interrupts(multirun=False),
            reporting_user_errors("train.py"),
            removed_when_unused(out, hydra_files(out)),
        ):
            results = run(cfg)
    name = cfg.get("optimized_metric")
    return results["metrics"].get(name) if name else None
