"""``train(cfg)``: build everything from a composed config, fit, evaluate every split, write results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from gnr650.data import SPLITS, InMemoryDataModule
from gnr650.finetune import count_params, feature_cache, trainable_modules
from gnr650.interpret.callbacks import weights_epoch
from gnr650.interpret.predictions import save_test_predictions
from gnr650.models import BuiltModel
from gnr650.runs import (
    RunInterrupted,
    check_launch,
    check_writable,
    completed_results,
    run_control,
    versions,
    write_results,
)
from gnr650.runs.preflight import check_override_types
from gnr650.training import ClassificationModule, DevicePreprocess, use_channels_last

log = logging.getLogger(__name__)


def instantiate_list(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict or list node; ``null`` or empty gives ``[]``."""
    if not node:
        return []
    items = node.values() if isinstance(node, DictConfig) else node
    return [instantiate(item) for item in items if item is not None and "_target_" in item]


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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


def build(cfg: DictConfig) -> tuple[InMemoryDataModule, BuiltModel, ClassificationModule]:
    """Data first (cheap to check), then the model, the strategy and the LightningModule."""
    dm: InMemoryDataModule = instantiate(cfg.dataset)
    dm.setup()
    built: BuiltModel = instantiate(cfg.model, num_classes=dm.num_classes)
    trainable = trainable_modules(built, cfg.finetune.train_blocks, cfg.finetune.get("train_head", True))
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
    module = ClassificationModule(
        built.net,
        preprocess,
        dm.class_names,
        trainable,
        built.head,
        **OmegaConf.to_container(cfg.optimizer, resolve=True),
    )
    return dm, built, module


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment into ``cfg.paths.output_dir`` and return its results (also in results.json).

    A failing run still writes results.json, with ``status: failed`` and the error, then re-raises.
    """
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    check_writable(out)
    results: dict[str, Any] = {
        "status": "running",
        "error": None,
        "dataset": cfg.dataset.get("_target_", "").rsplit(".", 1)[-1],
        "model": cfg.model.get("name"),
        "finetune": cfg.finetune.get("name"),
        "seed": cfg.seed,
        "overrides": _overrides(),
        "run_dir": str(out.resolve()),
    }
    try:
        pl.seed_everything(cfg.seed, workers=True)
        dm, built, module = build(cfg)
        results["dataset"] = dm.name
        results["data"] = {"sizes": dm.summary(), "classes": dm.class_names}
        results["params"] = count_params(built.net)
        results["trainable_modules"] = module.trainable
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
        loggers = instantiate_list(cfg.get("logger"))
        configured = instantiate_list(cfg.get("callbacks"))
        control = run_control(
            _checkpoint_dir(configured, out),
            results["overrides"],
            loggers,
            cfg.get("resume"),
            bool(cfg.get("skip_done")),
            cfg.get("ckpt_path"),
            cfg.last_ckpt_every_s,
            checkpointing=cfg.trainer.get("enable_checkpointing", True),
        )
        callbacks = configured + ([cache] if cache else []) + control.callbacks
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        check_launch(trainer)
        results["resumed_from"] = control.ckpt_path
        fit_s = 0.0
        if results["params"]["trainable"] > 0:
            t0 = time.perf_counter()
            with control.fitting():
                trainer.fit(module, datamodule=dm, ckpt_path=control.ckpt_path, weights_only=True)
            fit_s = time.perf_counter() - t0
            ckpt = _best_checkpoint(trainer)
        else:
            log.info("Strategy '%s' trains nothing: evaluating the model as loaded.", cfg.finetune.name)
            ckpt = None
        with control.reading(ckpt):
            trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
        final = module.final_results
        if _is_global_zero() and module.test_predictions:
            if trainer.world_size == 1:
                save_test_predictions(out / "artifacts", module.test_predictions, weights_epoch(trainer))
            else:  # each rank saw a shard of the test split
                log.info("test_predictions.npz is not written under DDP (%d processes).", trainer.world_size)
        results["metrics"] = {f"{s}/{k}": final[s][k] for s in SPLITS for k in ("acc", "acc_macro", "loss")}
        results["per_class"] = {s: final[s]["per_class"] for s in SPLITS}
        results["confusion_matrix"] = {s: final[s]["confusion_matrix"] for s in SPLITS}
        results["checkpoint"] = ckpt
        results["feature_cache"] = cache.summary if cache else None
        results["epochs"] = trainer.current_epoch
        results["timing"] = {"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - start, 3)}
        results["status"] = "completed"
    except BaseException as e:
        results["status"] = "failed"
        results["error"] = f"{type(e).__name__}: {e}"
        results["timing"] = {"fit_s": None, "total_s": round(time.perf_counter() - start, 3)}
        raise
    finally:
        results["versions"] = versions()
        results["config"] = OmegaConf.to_container(cfg, resolve=False)
        if _is_global_zero():
            write_results(out / "results.json", results)
    if _is_global_zero():  # the one rank that wrote it
        log.info(
            "Accuracy train %.4f, val %.4f, test %.4f -> %s",
            results["metrics"]["train/acc"],
            results["metrics"]["val/acc"],
            results["metrics"]["test/acc"],
            out / "results.json",
        )
    return results


def _is_global_zero() -> bool:
    return pl.utilities.rank_zero_only.rank == 0


def hydra_task(cfg: DictConfig) -> float | None:
    """What ``train.py`` runs; returns the metric Hydra sweepers optimise (``cfg.optimized_metric``).

    In a multirun a failed job has written its failed results.json; it returns None instead of
    raising, because Hydra's sweeper would otherwise abort and skip the sweep summary. An interrupt
    (Ctrl-C, SIGTERM) does stop the sweep. ``skip_done=true``: a job whose results.json completed
    with the same overrides is not trained again.
    """
    check_override_types(cfg)
    done = completed_results(Path(cfg.paths.output_dir), _overrides()) if cfg.get("skip_done") else None
    if done is not None:
        log.info("skip_done: %s already completed; not training it again.", cfg.paths.output_dir)
        results = done
    else:
        try:
            results = train(cfg)
        except RunInterrupted:
            raise
        except Exception:
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                log.exception("Job failed; its results.json records the error. The sweep goes on.")
                return None
            raise
    name = cfg.get("optimized_metric")
    return results["metrics"].get(name) if name else None
