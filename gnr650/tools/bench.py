"""``gnr650-bench``: the framework's training against a plain PyTorch loop on the same data and settings.

    gnr650-bench experiment=overfit-resnet18                       # per-epoch time, 5 epochs per run
    gnr650-bench experiment=overfit-resnet18 --mode run            # whole runs, the config's max_epochs
    gnr650-bench model=vit_b16 finetune=full batch_size=128 trainer=gpu
    gnr650-bench experiment=eurosat-vit model=vit_ti16 --strategies full,last,top4,lora,vpt,bitfit,norm,llrd

In one process, alternating (ABBA), it runs (a) ``train(cfg)``, exactly what ``train.py`` runs
(LightningModule, Trainer, callbacks, logger, final evaluation, feature cache when on), with a
timing callback added, and (b) a hand-written loop over the same in-memory tensors: the same
model and preprocessing (built by ``build(cfg)``), batch size, precision, AdamW groups and
schedule, with per-epoch validation and the final train/val/test evaluation. It prints images/s,
epoch and whole-run wall time, peak memory and the ratios, and records them in a markdown file.
With ``--strategies`` it instead runs ``train(cfg)`` once per strategy and repeat (rotating the order)
and compares each strategy's training images/s with the first one's (``full``: what a
parameter-efficient strategy should not be slower than).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gnr650.data import SPLITS
from gnr650.errors import reporting_user_errors
from gnr650.finetune.strategies import set_mode
from gnr650.runs import prepare_process, versions
from gnr650.tools import bench_phases
from gnr650.train import build, train
from gnr650.training import on_gpu
from gnr650.training.optim import warmup_cosine_optimizer
from gnr650.training.precision import autocast as precision_autocast
from gnr650.training.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
MARKDOWN_HEADER = """# Benchmarks

Written by `gnr650-bench` (`gnr650/tools/bench.py`); each section is one command, replaced when rerun.
(a) **framework** = `train(cfg)` as `train.py` runs it; (b) **plain** = a hand-written PyTorch loop
over the same in-memory tensors, model, preprocessing, batch size, precision and optimizer. Epoch
time = training + validation + per-epoch callbacks (checkpoints, logging), first epoch of each run
left out as warm-up in epoch mode; whole run = set-up (data, model) + all epochs + final train/val/test
evaluation (+ the configured callbacks' exports for the framework). Ratios are given of the best
(minimum: least disturbed when other jobs share the machine) and of the medians. Memory: peak process RSS (CPU) or
`torch.cuda.max_memory_allocated` (GPU) during each run.
"""


# ---------------------------------------------------------------------------------------- measuring


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class EpochTimer(pl.Callback):
    """Marks the start of every training epoch, of its validation, and the end of training; writes
    them to ``path`` (JSON) so the benchmark can read them back from a ``train(cfg)`` run."""

    def __init__(self, path: str):
        self.path = path
        self.marks: list[tuple[str, float]] = []

    def _mark(self, what: str) -> None:
        _sync()
        self.marks.append((what, time.perf_counter()))

    def on_train_epoch_start(self, trainer, pl_module):
        self._mark("epoch")

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._mark("val")

    def on_train_end(self, trainer, pl_module):
        self._mark("end")
        Path(self.path).write_text(json.dumps(self.marks))


def _epochs(marks: list[tuple[str, float]]) -> tuple[list[float], list[float]]:
    """Epoch wall times (epoch start to the next, or to the end) and training-phase times (to validation)."""
    starts = [i for i, (what, _) in enumerate(marks) if what == "epoch"] + [len(marks) - 1]
    epoch_s, train_s = [], []
    for a, b in zip(starts, starts[1:]):
        epoch_s.append(marks[b][1] - marks[a][1])
        val = next((t for what, t in marks[a + 1 : b] if what == "val"), marks[b][1])
        train_s.append(val - marks[a][1])
    return epoch_s, train_s


class PeakMemory:
    """Peak memory inside the block: ``max_memory_allocated`` on a GPU, else the process RSS sampled every 10 ms."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.01):
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def label(self) -> str:
        return f"{self.peak / 2**30:.2f} GiB {'allocated (GPU)' if self.cuda else 'RSS'}"


@dataclass
class Run:
    """One timed run of either loop."""

    epoch_s: list[float]
    train_s: list[float]
    total_s: float
    peak: str
    notes: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ the two loops


def run_framework(cfg: DictConfig, out_dir: Path) -> Run:
    """``train(cfg)`` into ``out_dir``, with an ``EpochTimer`` added to the configured callbacks."""
    cfg = copy.deepcopy(cfg)
    marks = out_dir / "epoch_marks.json"
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.callbacks = {
            **(OmegaConf.to_container(cfg.callbacks) if cfg.get("callbacks") else {}),
            "bench_timer": {"_target_": "gnr650.tools.bench.EpochTimer", "path": str(marks)},
        }
    with PeakMemory(_device(cfg).type == "cuda") as mem:
        start = time.perf_counter()
        results = train(cfg)
        _sync()
        total = time.perf_counter() - start
    epoch_s, train_s = _epochs(json.loads(marks.read_text()))
    return Run(
        epoch_s,
        train_s,
        total,
        mem.label,
        {
            "feature_cache": results.get("feature_cache"),
            "test_acc": results["metrics"]["test/acc"],
            "n_train": results["data"]["sizes"]["train"],
            "trainable": results["params"]["trainable"],
        },
    )


def _device(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if on_gpu(cfg.trainer.get("accelerator", "auto")) else "cpu")


def run_plain(cfg: DictConfig) -> Run:
    """The hand-written loop: slice batches from the tensors, preprocess on the device, step, evaluate."""
    device = _device(cfg)
    epochs = int(cfg.trainer.max_epochs)
    with PeakMemory(device.type == "cuda") as mem:
        start = time.perf_counter()
        pl.seed_everything(cfg.seed)
        dm, built, module = build(cfg)
        net, preprocess, trainable = built.net.to(device), module.preprocess.to(device), module.trainable
        data = {name: (dm.split(name).images.to(device), dm.split(name).labels.to(device)) for name in SPLITS}
        images, labels = data["train"]
        batch, n, k = dm.batch_size, len(labels), dm.num_classes
        optimizer, schedule = warmup_cosine_optimizer(
            net, built.head, cfg.optimizer, epochs * math.ceil(n / batch), epochs, device, module.lr_scales
        )
        precision, _ = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, net)  # as train() does
        autocast = lambda: precision_autocast(precision, device)  # noqa: E731

        def evaluate(name: str) -> dict[str, torch.Tensor]:
            set_mode(net, trainable, False)
            x_all, y_all = data[name]
            with torch.inference_mode():
                loss, preds = torch.zeros((), device=device), []
                for i in range(0, len(y_all), dm.eval_batch_size):
                    y = y_all[i : i + dm.eval_batch_size]
                    with autocast():
                        logits = net(preprocess(x_all[i : i + dm.eval_batch_size]))
                    loss += F.cross_entropy(logits.float(), y, reduction="sum")
                    preds.append(logits.argmax(1))
                confusion = torch.bincount(y_all * k + torch.cat(preds), minlength=k * k).view(k, k)
            return {"loss": loss / len(y_all), "acc": confusion.diag().sum() / len(y_all), "confusion": confusion}

        marks: list[tuple[str, float]] = []
        history = []  # per-epoch metrics stay on the device, read once at the end
        for _ in range(epochs):
            _sync()
            marks.append(("epoch", time.perf_counter()))
            set_mode(net, trainable, True)
            hits, loss_sum = torch.zeros((), device=device, dtype=torch.long), torch.zeros((), device=device)
            for index in torch.randperm(n, device=device).split(batch):
                x, y = preprocess(images[index], augment=True), labels[index]
                with autocast():
                    logits = net(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.optimizer.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                hits += (logits.argmax(1) == y).sum()
                loss_sum += loss.detach() * len(y)
            _sync()
            marks.append(("val", time.perf_counter()))
            val = evaluate("val")
            history.append(
                {"train/acc": hits / n, "train/loss": loss_sum / n, "val/acc": val["acc"], "val/loss": val["loss"]}
            )
        _sync()
        marks.append(("end", time.perf_counter()))
        final = {name: evaluate(name) for name in SPLITS}
        _sync()
        total = time.perf_counter() - start
    epoch_s, train_s = _epochs(marks)
    return Run(
        epoch_s,
        train_s,
        total,
        mem.label,
        {"test_acc": float(final["test"]["acc"]), "n_train": n, "last_train_acc": float(history[-1]["train/acc"])},
    )


# ------------------------------------------------------------------------------------------ driving


def compose_cfg(overrides: list[str], epochs: int | None) -> DictConfig:
    """Compose ``configs/train.yaml`` as ``train.py`` would (Hydra's own config set for ``train``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        if epochs is not None:
            cfg.trainer.max_epochs = epochs
    return cfg


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    v = versions()
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}{gpu}; Python {v['python']}, torch {v['torch']}, Lightning "
        f"{v['pytorch_lightning']}, "
        f"timm {v['timm']}"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[Run], n_train: int, skip_first: bool) -> dict:
    """Median and best (minimum: least disturbed by other jobs) of the epoch, training-phase and whole-run times."""
    drop = 1 if skip_first else 0
    epoch_s = [t for r in runs for t in (r.epoch_s[drop:] or r.epoch_s)]
    train_s = [t for r in runs for t in (r.train_s[drop:] or r.train_s)]
    total_s = [r.total_s for r in runs]
    return {
        "median": {"images_s": n_train / _median(train_s), "epoch_s": _median(epoch_s), "total_s": _median(total_s)},
        "best": {"images_s": n_train / min(train_s), "epoch_s": min(epoch_s), "total_s": min(total_s)},
        "all_epoch_s": [round(t, 3) for r in runs for t in r.epoch_s],
        "all_total_s": [round(t, 2) for t in total_s],
        "peak": runs[-1].peak,
        "notes": runs[-1].notes,
    }


def _ratios(a: dict, b: dict) -> str:
    return (
        f"epoch time {a['epoch_s'] / b['epoch_s']:.3f}, images/s {a['images_s'] / b['images_s']:.3f}, "
        f"whole run {a['total_s'] / b['total_s']:.3f}"
    )


def report(args, cfg: DictConfig, n_train: int, stats: dict[str, dict]) -> tuple[str, str]:
    """The console text and the markdown section."""
    a, b = stats["framework"], stats["plain"]
    ratios = [
        f"ratio framework/plain, best-of (least disturbed by other jobs): {_ratios(a['best'], b['best'])}",
        f"ratio framework/plain, medians: {_ratios(a['median'], b['median'])}",
    ]
    head = (
        f"{cfg.model.name} on {cfg.dataset._target_.rsplit('.', 1)[-1]} ({n_train} train images), "
        f"finetune={cfg.finetune.name}, "
        f"batch {cfg.batch_size}, precision {cfg.trainer.precision}, device {_device(cfg).type}, "
        f"{cfg.trainer.max_epochs} epochs x {args.repeats} alternating repeats, mode {args.mode}"
    )
    rows = [("framework (train.py)", a), ("plain PyTorch loop", b)]

    def cells(s: dict, sep: str) -> list[str]:
        m, x = s["median"], s["best"]
        return [
            f"{m['images_s']:.1f}{sep}{x['images_s']:.1f}",
            f"{m['epoch_s']:.3f}{sep}{x['epoch_s']:.3f}",
            f"{m['total_s']:.2f}{sep}{x['total_s']:.2f}",
        ]

    lines = [head, f"{'(median, best)':22} {'images/s':>16} {'epoch s':>14} {'whole run s':>14}  peak memory"]
    lines += [
        f"{name:22} " + " ".join(f"{c:>{w}}" for c, w in zip(cells(s, " "), (16, 14, 14))) + f"  {s['peak']}"
        for name, s in rows
    ]
    lines += ratios + [
        f"feature cache: {a['notes'].get('feature_cache')}; test acc framework "
        f"{a['notes']['test_acc']:.4f}, plain {b['notes']['test_acc']:.4f}"
    ]
    md = [
        *_section_head(args, head),
        "| loop (median / best) | images/s | epoch s | whole run s | peak memory | epochs s (all runs) | whole "
        "runs s |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    md += [
        f"| {name} | " + " | ".join(cells(s, " / ")) + f" | {s['peak']} | {s['all_epoch_s']} | {s['all_total_s']} |"
        for name, s in rows
    ]
    md += [""] + [f"**{r}**" if i == 0 else r for i, r in enumerate(ratios)]
    md += ["", f"Feature cache: {a['notes'].get('feature_cache')}.", ""]
    return "\n".join(lines), "\n".join(md)


def _section_head(args: argparse.Namespace, setting: str) -> list[str]:
    """A markdown section's title (the command, without where it is recorded), when, where and what."""
    return [
        f"## `gnr650-bench {' '.join(_without_out(args.argv))}`",
        "",
        f"- when: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- setting: {setting}",
        "",
    ]


def _without_out(argv: list[str]) -> list[str]:
    """The command as it names the measurement: where it is recorded (``--out``) is left out."""
    kept, skip = [], False
    for a in argv:
        if skip or a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        kept.append(a)
    return kept


def write_markdown(path: Path, section: str) -> None:
    """Insert or replace this command's section (sections start with ``## ``)."""
    text = path.read_text() if path.exists() else MARKDOWN_HEADER
    title = section.splitlines()[0]
    parts = text.split("\n## ")
    kept = [p for p in parts[1:] if "## " + p.splitlines()[0] != title]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n## ".join([parts[0].rstrip("\n") + "\n"] + kept).rstrip("\n") + "\n\n" + section)


def run_strategies(args: argparse.Namespace) -> tuple[str, str]:
    """Each strategy's training images/s (training phase of every epoch but the first), against the first's."""
    names = [n for n in args.strategies.split(",") if n]
    cfgs = {n: compose_cfg([*args.overrides, f"finetune={n}"], args.epochs) for n in names}
    runs: dict[str, list[Run]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="gnr650-bench-") as tmp:
        for r in range(args.repeats):
            for n in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no strategy always runs first
                run = run_framework(cfgs[n], Path(tmp) / f"{n}{r}")
                runs[n].append(run)
                print(f"[bench] {n} run {r}: epochs {[round(t, 3) for t in run.epoch_s]} s", flush=True)
    stats = {n: summarize(v, v[0].notes["n_train"], skip_first=True) for n, v in runs.items()}
    base = stats[names[0]]
    cfg = cfgs[names[0]]
    head = (
        f"{cfg.model.name} at {cfg.model.get('img_size')} px on {cfg.dataset._target_.rsplit('.', 1)[-1]} "
        f"({base['notes']['n_train']} train images), batch {cfg.batch_size}, precision {cfg.trainer.precision}, "
        f"device {_device(cfg).type}, {args.epochs} epochs (first left out) x {args.repeats} repeats, rotating order"
    )
    rows = []
    for n, st in stats.items():
        cache = st["notes"].get("feature_cache") or {}
        rows.append(
            [
                n,
                f"{st['notes']['trainable']:,}",
                f"{st['median']['images_s']:.1f} / {st['best']['images_s']:.1f}",
                f"{st['median']['images_s'] / base['median']['images_s']:.2f} / "
                f"{st['best']['images_s'] / base['best']['images_s']:.2f}",
                cache.get("at") or "none",
                st["peak"],
            ]
        )
    titles = ["strategy", "trainable", "images/s (median / best)", f"vs {names[0]}", "cached before", "peak memory"]
    text = "\n".join([head, *("  ".join(f"{c:>14}" for c in row) for row in [titles, *rows])])
    md = [
        *_section_head(args, head),
        "| " + " | ".join(titles) + " |",
        "|---|---:|---:|---:|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    return text, "\n".join(md)


def run_phases(args: argparse.Namespace) -> tuple[str, str]:
    """Each phase's images/s at each precision (and compiled), alternating in one process."""
    cfg = compose_cfg(args.overrides, None)
    variants = bench_phases.variants_from(args)
    results = bench_phases.measure(cfg, variants, args.images, args.repeats)
    setting = (
        f"{cfg.model.name} at {cfg.model.get('img_size') or 'native'} px, finetune={cfg.finetune.name}, batch "
        f"{cfg.batch_size}, evaluation batch {cfg.eval_batch_size}, device {_device(cfg).type}, {args.images} images "
        f"a round x {args.repeats} rounds (best round), after one warm-up call"
    )
    text, md = bench_phases.report(results, variants, setting)
    return text, "\n".join([*_section_head(args, setting), *md])


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gnr650-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    p.add_argument(
        "--mode",
        choices=("epoch", "run"),
        default="epoch",
        help="epoch: --epochs per run, compare epoch time; run: the config's max_epochs, compare whole runs",
    )
    p.add_argument("--epochs", type=int, default=5, help="epochs per run in epoch mode (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="alternating (a, b) pairs, order flipped every other pair")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to record the numbers in")
    p.add_argument(
        "--strategies",
        default="",
        help="comma-separated finetune options: training images/s of each against the first (e.g. full,lora,vpt)",
    )
    p.add_argument(
        "--phases",
        action="store_true",
        help="images/s of each phase (train, evaluate, cache, analysis, predict) at each of --precisions",
    )
    p.add_argument("--precisions", default="32-true,bf16-mixed", help="with --phases: trainer.precision values")
    p.add_argument("--compile", action="store_true", help="with --phases: each precision also torch.compile'd")
    p.add_argument("--images", type=int, default=256, help="with --phases: images per timed round of a phase")
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    prepare_process()
    with reporting_user_errors("gnr650-bench"):
        return bench(args)


def bench(args: argparse.Namespace) -> int:
    """Run the comparison ``args`` asks for, print it and record it in ``args.out``."""
    measure = run_phases if args.phases else run_strategies if args.strategies else run_loops
    text, section = measure(args)
    print(text)
    write_markdown(args.out, section)
    print(f"[bench] recorded in {args.out}")
    return 0


def run_loops(args: argparse.Namespace) -> tuple[str, str]:
    """The framework against the plain loop, alternating (ABBA)."""
    cfg = compose_cfg(args.overrides, args.epochs if args.mode == "epoch" else None)
    runs: dict[str, list[Run]] = {"framework": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="gnr650-bench-") as tmp:
        for r in range(args.repeats):
            for which in ("framework", "plain") if r % 2 == 0 else ("plain", "framework"):
                run = run_framework(cfg, Path(tmp) / f"{which}{r}") if which == "framework" else run_plain(cfg)
                runs[which].append(run)
                print(
                    f"[bench] {which} run {r}: epochs {[round(t, 3) for t in run.epoch_s]} s, total "
                    f"{run.total_s:.2f} s",
                    flush=True,
                )
    n_train = runs["plain"][0].notes["n_train"]
    stats = {k: summarize(v, n_train, skip_first=args.mode == "epoch") for k, v in runs.items()}
    return report(args, cfg, n_train, stats)
