"""Data storage benchmarks on image folders this script generates: `python scripts/data_benchmark.py [--out FILE]`.

1. study 1 (experiment=overfit-resnet18) epoch time with dataset.storage=disk vs memory, alternated in one
   process (memory, disk, disk, memory), on a generated CIFAR-like JPEG folder;
2. a generated folder whose decoded size is 3x dataset.memory_budget_gb, trained with storage=auto (the
   splits that do not fit are memory-mapped) vs storage=memory, each in a fresh process: peak RssAnon and
   training images/s once the page cache is warm;
3. decoding throughput (images/s) of JPEG and PNG with PIL (as the data sets decode) and torchvision.io,
   by number of threads.

Prints a markdown section and, with --out, records it there (replacing this script's previous section).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnr650.data.cifar10 import CIFAR10_CLASSES  # noqa: E402
from gnr650.data.images import decode_image  # noqa: E402
from gnr650.tools.bench import compose_cfg, machine, run_framework, write_markdown  # noqa: E402

TITLE = "## scripts/data_benchmark.py: disk vs memory storage, data beyond the memory budget, decoding"
CLASSES = CIFAR10_CLASSES  # also the class folders of study 1's data set


def generate(root: Path, per_class: int, size: int, ext: str, seed: int = 0) -> list[Path]:
    """Smooth random colour fields plus noise (compress like photos more than pure noise does)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / c / f"{i:05d}.{ext}"
            out.append(path)
            if path.exists():
                continue
            base = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size)))
            noise = rng.integers(-20, 21, (size, size, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return out


class PeakRssAnon:
    """Peak anonymous resident memory (RssAnon in /proc/self/status: not the page cache), sampled every 10 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _best_median(values: list[float]) -> tuple[float, float]:
    return min(values), sorted(values)[len(values) // 2]


def study1(work: Path, epochs: int) -> str:
    data = work / "cifar"
    for split, n in (("train", 200), ("test", 20)):
        generate(data / "cifar10-jpg" / split, n, 32, "jpg", seed=len(split))
    common = [
        "experiment=overfit-resnet18",
        f"paths.data_dir={data}",
        f"paths.cache_dir={work / 'cache'}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu",
        "+trainer.limit_test_batches=1",  # the final evaluation is not part of the epoch time
    ]
    epoch_s: dict[str, list[float]] = {"memory": [], "disk": []}
    for i, storage in enumerate(("memory", "disk", "disk", "memory")):
        cfg = compose_cfg(common + [f"dataset.storage={storage}"], epochs)
        run = run_framework(cfg, work / f"study1-{i}")
        epoch_s[storage] += run.epoch_s[1:]  # the first epoch of each run is warm-up
        print(f"study 1, run {i}, storage={storage}: epoch times {[round(t, 2) for t in run.epoch_s]} s", flush=True)
    (bm, mm), (bd, md) = _best_median(epoch_s["memory"]), _best_median(epoch_s["disk"])
    return (
        f"**Study 1 epoch time** (`experiment=overfit-resnet18`: ResNet-18, 1,000 train + 1,000 val images at "
        f"32x32 per epoch, on a generated CIFAR-like JPEG folder; {epochs} epochs per run, the first left out, "
        f"runs alternated memory, disk, disk, memory): memory best {bm:.2f} s / median {mm:.2f} s, disk best "
        f"{bd:.2f} s / median {md:.2f} s: **disk/memory {bd / bm:.3f}x** best-of ({md / mm:.3f}x medians; "
        "target <= 1.05x).\n"
    )


def over_budget_child(args) -> None:
    """One training run in this fresh process; prints its peak RssAnon and images/s as JSON."""
    from gnr650.runs import prepare_process

    prepare_process()
    overrides = json.loads(args.child)
    cfg = compose_cfg(overrides, args.epochs)
    base = PeakRssAnon.now()
    with PeakRssAnon() as mem:
        run = run_framework(cfg, Path(tempfile.mkdtemp(prefix="data-bench-")))
    images = cfg.trainer.limit_train_batches * cfg.batch_size
    print(json.dumps({"peak": mem.peak, "base": base, "img_s": [images / t for t in run.train_s[1:]]}))


def over_budget(work: Path, budget_gb: float, epochs: int) -> str:
    size, factor = 128, 3
    per_class = math.ceil(factor * budget_gb * 1e9 / (3 * size * size) / len(CLASSES))
    generate(work / "big", per_class, size, "jpg")
    decoded = per_class * len(CLASSES) * 3 * size * size
    common = [
        "dataset=imagefolder",
        f"dataset.root={work / 'big'}",
        f"paths.cache_dir={work / 'cache'}",
        f"dataset.memory_budget_gb={budget_gb}",
        "model=resnet18",
        "model.img_size=32",
        "model.pretrained=false",
        "finetune=full",
        "batch_size=64",
        "eval_batch_size=256",
        "+trainer.limit_train_batches=20",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu",
    ]
    results = {}
    for storage in ("auto", "memory"):  # the first run builds the stores: warm in the page cache for both
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(common + [f"dataset.storage={storage}"])]
            + ["--epochs", str(epochs)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise RuntimeError(f"The {storage} run failed:\n{out.stderr[-3000:]}")
        results[storage] = json.loads(out.stdout.strip().splitlines()[-1])
    params = 11_181_642 + 512 * 10 - 512 * 1000  # ResNet-18 with a 10-class head
    state = params * 4 * 4  # weights, gradients and AdamW's two moments, float32
    auto, memory = results["auto"], results["memory"]
    bound = budget_gb * 1e9 + state + 0.5e9
    speed = max(auto["img_s"]) / max(memory["img_s"])
    return (
        f"**Beyond the memory budget**: a generated folder of {per_class * len(CLASSES):,} JPEGs at {size}x{size}, "
        f"{decoded / 1e9:.2f} GB decoded = {factor}x `dataset.memory_budget_gb={budget_gb}`; ResNet-18 at 32 px, "
        f"batch 64, 20 training batches per epoch, {epochs} epochs (the first left out), each storage in a fresh "
        f"process (the first builds the stores, so the page cache is warm for both). `storage=auto` (the "
        f"training split on disk): peak RssAnon "
        f"{auto['peak'] / 1e9:.3f} GB ({auto['base'] / 1e9:.2f} GB after imports), "
        f"{max(auto['img_s']):.0f} images/s best epoch; `storage=memory`: peak RssAnon {memory['peak'] / 1e9:.2f} GB, "
        f"{max(memory['img_s']):.0f} images/s. Bound budget + model/optimizer state ({state / 1e9:.2f} GB) + "
        f"0.5 GB = {bound / 1e9:.3f} GB: **{'met' if auto['peak'] <= bound else 'NOT met'}**; speed disk/memory "
        f"**{speed:.2f}x** (target >= 0.9x).\n"
    )


def decoding(work: Path, n: int) -> str:
    import torch
    from torchvision.io import decode_image as tv_decode
    from torchvision.io import read_file

    torch.set_num_threads(1)
    rows = ["| format | decoder | 1 thread | 2 threads | 4 threads |", "| --- | --- | --- | --- | --- |"]
    for ext in ("jpg", "png"):
        files = generate(work / f"decode-{ext}", n // len(CLASSES), 256, ext)
        for name, fn in (
            ("PIL (`decode_image`)", decode_image),
            ("torchvision.io", lambda p: tv_decode(read_file(str(p)))),
        ):
            fn(files[0])
            cells = []
            for threads in (1, 2, 4):
                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(fn, files))
                cells.append(f"{len(files) / (time.perf_counter() - start):,.0f}")
            rows.append(f"| {ext.upper()} 256x256 | {name} | " + " | ".join(cells) + " |")
    return (
        f"**Decoding throughput** (images/s, {n} images each, read from the page cache):\n\n" + "\n".join(rows) + "\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="markdown file to record the section in (docs/benchmarks.md)")
    p.add_argument("--work", type=Path, help="folder for the generated images and stores (default: a temporary one)")
    p.add_argument("--parts", default="study1,over_budget,decoding")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--budget-gb", type=float, default=0.1)
    p.add_argument("--decode-images", type=int, default=300)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        over_budget_child(args)
        return 0
    from gnr650.runs import prepare_process

    prepare_process()
    work = args.work or Path(tempfile.mkdtemp(prefix="gnr650-data-bench-"))
    parts = args.parts.split(",")
    body = []
    if "study1" in parts:
        body.append(study1(work, args.epochs))
    if "over_budget" in parts:
        body.append(over_budget(work, args.budget_gb, args.epochs))
    if "decoding" in parts:
        body.append(decoding(work, args.decode_images))
    section = (
        f"{TITLE}\n\n`python scripts/data_benchmark.py {' '.join(sys.argv[1:])}` on {machine()}. This machine is "
        "shared with other jobs (load average well above its core count while measured): every number is short "
        "and noisy, ratios more than absolute values.\n\n" + "\n".join(body)
    )
    print(section)
    if args.out:
        write_markdown(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
