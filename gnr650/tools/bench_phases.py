"""``gnr650-bench --phases``: images/s of each phase of a run at each precision (and compiled), side by side.

The phases are the forward/backward passes a run makes, on the config's model, preprocessing, data and
strategy (built by ``build(cfg)``): **train** (a training step: the trainable suffix on cached features when the
run caches, else the whole network), **evaluate** (the whole network, ``eval_batch_size`` images a batch),
**cache** (the frozen prefix, when the run caches), **analysis** (the whole network with timm's fused attention
off, as the attention export and the analysis passes run it) and **predict** (``predict.py``'s 64 images a batch).
Every variant (precision, compiled or not) of a phase runs in turn, in one process, for ``--repeats`` rounds
(order reversed every other round); the best round of each is reported, with the compile time apart.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from gnr650.errors import UserError
from gnr650.finetune.feature_cache import FeatureCacheError, cut_network
from gnr650.finetune.strategies import set_mode
from gnr650.interpret.attention import attention_layers, unfused
from gnr650.train import build
from gnr650.training import on_gpu
from gnr650.training.optim import warmup_cosine_optimizer
from gnr650.training.precision import autocast as precision_autocast

PREDICT_BATCH = 64  # gnr650.inference.predict.predict_files' default


class BenchSettingError(ValueError, UserError):
    """A gnr650-bench option that cannot be measured as given."""


@dataclass
class Variant:
    """One way to run the phases: a precision, compiled or eager."""

    precision: str
    compiled: bool

    @property
    def label(self) -> str:
        return f"{self.precision}{' compiled' if self.compiled else ''}"


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def phase_runners(cfg: DictConfig, variant: Variant, images: int, device: torch.device) -> dict[str, Callable[[], int]]:
    """One callable per phase; each runs ``images`` images (at least one training batch) and returns how many."""
    torch.manual_seed(cfg.seed)
    images = max(images, int(cfg.batch_size))
    dm, built, module = build(cfg)
    net, preprocess, trainable = built.net.to(device), module.preprocess.to(device), module.trainable
    split = dm.split("train")
    data = split.images[:images].to(device)
    labels = split.labels[: len(data)].to(device)
    try:
        cut = None if dm.augment or not trainable else cut_network(net, trainable)
    except FeatureCacheError:
        cut = None
    model: Callable = torch.compile(net) if variant.compiled else net
    suffix: Callable | None = None
    if cut is not None:
        suffix = torch.compile(cut.suffix) if variant.compiled else cut.suffix
    autocast = lambda: precision_autocast(variant.precision, device)  # noqa: E731
    features: list[torch.Tensor] = []

    def forward_all(fn: Callable, batch: int) -> int:
        set_mode(net, trainable, False)
        with torch.inference_mode():
            for i in range(0, images, batch):
                x = preprocess(data[i : i + batch])
                with autocast():
                    fn(x)
        return images

    def cache() -> int:
        """The frozen prefix over the images, kept as the feature cache keeps it (in the dtype it returns)."""
        set_mode(net, trainable, False)
        with torch.inference_mode():
            parts = []
            for i in range(0, images, dm.eval_batch_size):
                with autocast():
                    parts.append(cut.prefix(preprocess(data[i : i + dm.eval_batch_size])))
        features[:] = [torch.cat(parts).clone()]  # a normal tensor (an inference tensor cannot take part in training)
        return images

    if trainable:
        optimizer, schedule = warmup_cosine_optimizer(
            net, built.head, cfg.optimizer, 10_000, int(cfg.trainer.max_epochs), device, module.lr_scales
        )

    def train() -> int:
        set_mode(net, trainable, True)
        n = 0
        cached = features[0] if cut is not None else None
        for i in range(0, images - cfg.batch_size + 1, cfg.batch_size):
            y = labels[i : i + cfg.batch_size]
            with autocast():
                if cached is not None:
                    logits = suffix(cached[i : i + cfg.batch_size])
                else:
                    logits = model(preprocess(data[i : i + cfg.batch_size], augment=True))
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            n += len(y)
        return n

    def analysis() -> int:
        with unfused([m for _, m in attention_layers(net)]):
            return forward_all(net, dm.eval_batch_size)

    runners = {
        "evaluate": lambda: forward_all(model, dm.eval_batch_size),
        "analysis": analysis,
        "predict": lambda: forward_all(model, PREDICT_BATCH),
    }
    if cut is not None:
        runners = {"cache": cache, **runners}
    return {"train": train, **runners} if trainable else runners


def measure(cfg: DictConfig, variants: list[Variant], images: int, repeats: int) -> dict[str, dict[str, dict]]:
    """{phase: {variant label: {"images_s": best, "first_s": the first call (compile time included)}}}."""
    device = torch.device("cuda" if on_gpu(cfg.trainer.get("accelerator", "auto")) else "cpu")
    runners = {v.label: phase_runners(cfg, v, images, device) for v in variants}
    order = [p for p in ("cache", "train", "evaluate", "analysis", "predict") if p in runners[variants[0].label]]
    results: dict[str, dict[str, dict]] = {p: {} for p in order}
    for phase in order:
        if phase == "train" and "cache" in order:  # the suffix trains on features cached at its own precision
            for v in variants:
                runners[v.label]["cache"]()
        for v in variants:  # first call apart: warm-up and compilation
            results[phase][v.label] = {"first_s": _timed(runners[v.label][phase])[0], "times": []}
        for r in range(repeats):
            for v in variants if r % 2 == 0 else variants[::-1]:
                seconds, n = _timed(runners[v.label][phase])
                results[phase][v.label]["times"].append(n / seconds)
        for stats in results[phase].values():
            stats["images_s"] = max(stats.pop("times"))
    return results


def variants_from(args: argparse.Namespace) -> list[Variant]:
    """--precisions (explicit values: which one ``auto`` picks is what they measure), each also compiled."""
    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or "auto" in precisions:
        raise BenchSettingError(
            f"--precisions takes trainer.precision values to compare, such as 32-true,bf16-mixed (got "
            f"{args.precisions!r}); auto is not one: it picks among them per machine and network."
        )
    chosen = [Variant(p, False) for p in dict.fromkeys(precisions)]
    return chosen + ([Variant(p.precision, True) for p in chosen] if args.compile else [])


def report(results: dict[str, dict[str, dict]], variants: list[Variant], setting: str) -> tuple[str, list[str]]:
    """The console table and the markdown table: images/s per phase and variant, and each against the first."""
    base = variants[0].label
    titles = ["phase", *(f"{v.label} images/s" for v in variants), *(f"{v.label} / {base}" for v in variants[1:])]
    rows = []
    for phase, by_variant in results.items():
        speeds = [by_variant[v.label]["images_s"] for v in variants]
        rows.append([phase, *(f"{s:.1f}" for s in speeds), *(f"{s / speeds[0]:.2f}" for s in speeds[1:])])
    compile_notes = [
        f"{v.label}: " + ", ".join(f"{phase} {by[v.label]['first_s']:.1f} s" for phase, by in results.items())
        for v in variants
    ]
    text = "\n".join([setting, *("  ".join(f"{c:>18}" for c in row) for row in [titles, *rows]), *compile_notes])
    md = [
        "| " + " | ".join(titles) + " |",
        "|---|" + "---:|" * (len(titles) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "First call of each phase (warm-up, and compilation for compiled variants): " + "; ".join(compile_notes) + ".",
        "",
    ]
    return text, md
