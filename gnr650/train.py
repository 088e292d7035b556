"""``train(cfg)``: build everything from a composed config, fit, evaluate every split, write results.json."""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gnr650.callbacks.csv_history import CSVHistory
from gnr650.callbacks.divergence import DivergenceGuard
from gnr650.callbacks.last_checkpoint import LastCheckpoint, RunInterrupted, reporting_sigterm
from gnr650.callbacks.run_state import RunState
from gnr650.checkpoints import check_checkpoint, refusing_pickled_code
from gnr650.data import SPLITS, InMemoryDataModule
from gnr650.feature_cache import feature_cache
from gnr650.finetune import count_params, trainable_modules
from gnr650.io import write_json
from gnr650.models import BuiltModel
from gnr650.module import ClassificationModule
from gnr650.preflight import check_launch, check_override_types, check_writable
from gnr650.preprocess import DevicePreprocess
from gnr650.resume import LAST, checkpoint_dir, checkpoint_to_resume, completed_results

log = logging.getLogger(__name__)


def instantiate_list(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict or list node; ``null`` or empty gives ``[]``."""
    if not node:
        return []
    items = node.values() if isinstance(node, DictConfig) else node
    return [instantiate(item) for item in items if item is not None and "_target_" in item]


def versions() -> dict[str, str]:
    import hydra
    import timm
    import torchmetrics
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "pytorch_lightning": pl.__version__, "torchmetrics": torchmetrics.__version__,
            "hydra": hydra.__version__}


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is None:
        return None
    return getattr(ckpt, "best_model_path", None) or getattr(ckpt, "last_model_path", None) or None


def on_gpu(cfg: DictConfig) -> bool:
    """The configured trainer runs on CUDA (``accelerator: gpu``, or ``auto`` with a GPU present)."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _channels_last(cfg: DictConfig, net: torch.nn.Module) -> bool:
    """``channels_last: auto``: for conv nets (most weights in convolutions) on a GPU, where it is faster."""
    setting = cfg.get("channels_last", "auto")
    if setting != "auto":
        return bool(setting)
    conv = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return on_gpu(cfg) and conv > sum(p.numel() for p in net.parameters()) / 2


def build(cfg: DictConfig) -> tuple[InMemoryDataModule, BuiltModel, ClassificationModule]:
    """Data first (cheap to check), then the model, the strategy and the LightningModule."""
    dm: InMemoryDataModule = instantiate(cfg.dataset)
    dm.setup()
    built: BuiltModel = instantiate(cfg.model, num_classes=dm.num_classes)
    trainable = trainable_modules(built, cfg.finetune.train_blocks, cfg.finetune.get("train_head", True))
    mean, std = (built.mean, built.std) if built.mean is not None else dm.channel_stats()
    channels_last = _channels_last(cfg, built.net)
    if channels_last:
        built.net.to(memory_format=torch.channels_last)
    if cfg.get("compile", False):
        built.net.compile()
    preprocess = DevicePreprocess(mean, std, img_size=built.img_size, augment=dm.augment, crop_padding=dm.crop_padding,
                                  channels_last=channels_last)
    module = ClassificationModule(built.net, preprocess, dm.class_names, trainable, built.head,
                                  **OmegaConf.to_container(cfg.optimizer, resolve=True))
    return dm, built, module


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment into ``cfg.paths.output_dir`` and return its results (also in results.json).

    A failing run still writes results.json, with ``status: failed`` and the error, then re-raises.
    """
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    check_writable(out)
    results: dict[str, Any] = {
        "status": "running", "error": None, "dataset": cfg.dataset.get("_target_", "").rsplit(".", 1)[-1],
        "model": cfg.model.get("name"), "finetune": cfg.finetune.get("name"), "seed": cfg.seed,
        "overrides": _overrides(), "run_dir": str(out.resolve()),
    }
    try:
        pl.seed_everything(cfg.seed, workers=True)
        dm, built, module = build(cfg)
        results["dataset"] = dm.name
        results["data"] = {"sizes": dm.summary(), "classes": dm.class_names}
        results["params"] = count_params(built.net)
        results["trainable_modules"] = module.trainable
        log.info("%s on %s (%s), %s: %s trainable of %s parameters", built.name, dm.name, dm.summary(), cfg.finetune.name,
                 f"{results['params']['trainable']:,}", f"{results['params']['total']:,}")

        cache = feature_cache(cfg, dm, module)
        ckpt_path, same_run = checkpoint_to_resume(cfg)
        last = checkpoint_dir(cfg) / LAST
        loggers = instantiate_list(cfg.get("logger"))
        # In every run, whatever the callbacks group holds: exact resume, kept logs, a stop at a NaN loss, last.ckpt.
        run_state = [RunState(results["overrides"], check_overrides=same_run), CSVHistory(loggers), DivergenceGuard()]
        if cfg.trainer.get("enable_checkpointing", True):  # Lightning refuses checkpoint callbacks otherwise
            run_state.append(LastCheckpoint(last, every_s=cfg.last_ckpt_every_s))
        callbacks = instantiate_list(cfg.get("callbacks")) + ([cache] if cache else []) + run_state
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        check_launch(trainer)
        results["resumed_from"] = ckpt_path
        fit_s = 0.0
        if results["params"]["trainable"] > 0:
            t0 = time.perf_counter()
            if ckpt_path:
                check_checkpoint(ckpt_path)
            with refusing_pickled_code(ckpt_path), reporting_sigterm(last):
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
            fit_s = time.perf_counter() - t0
            ckpt = _best_checkpoint(trainer)
        else:
            log.info("Strategy '%s' trains nothing: evaluating the model as loaded.", cfg.finetune.name)
            ckpt = None
        with refusing_pickled_code(ckpt):
            trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
        final = module.final_results
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
            _write_results(out / "results.json", results)
    if _is_global_zero():  # the one rank that wrote it
        log.info("Accuracy train %.4f, val %.4f, test %.4f -> %s", results["metrics"]["train/acc"],
                 results["metrics"]["val/acc"], results["metrics"]["test/acc"], out / "results.json")
    return results


def _is_global_zero() -> bool:
    return pl.utilities.rank_zero_only.rank == 0


def _write_results(path: Path, results: dict[str, Any]) -> None:
    """An unwritable results.json must not lose the results: they go to the log, and a completed run fails."""
    try:
        write_json(path, results)
    except OSError as e:
        log.error("Could not write %s (%s). The results: %s", path, e,
                  json.dumps({k: results.get(k) for k in ("status", "error", "metrics", "checkpoint")}, default=str))
        if results["status"] == "completed":
            raise


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
