"""What was run, for a report's title and header: read from what each job saved (results.json, whose ``config``
is the composed config and ``provenance`` the commit and machine), never from the process writing the report.

A setting that differs between jobs is listed once per distinct value, in job order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from gnr650.summary.collect import Job
from gnr650.summary.tables import MISSING, duration

NOT_RECORDED = "not recorded"
VERSIONS = ("torch", "timm", "pytorch_lightning", "gnr650")
ALGORITHM_NAMES = {"adamw": "AdamW", "sgd": "SGD"}


def setting(job: Job, key: str) -> Any:
    """A dotted key of the job's saved config (interpolations resolved where they can be), or None."""
    config = job.results.get("config")
    if not isinstance(config, dict):
        return None
    try:
        return OmegaConf.select(OmegaConf.create(config), key, default=None, throw_on_resolution_failure=False)
    except Exception:  # a config OmegaConf cannot read: the header says "not recorded", the report goes on
        return None


def _distinct(jobs: list[Job], value: Callable[[Job], Any]) -> str:
    seen: list[str] = []
    for job in jobs:
        shown = value(job)
        if shown not in (None, "") and str(shown) not in seen:
            seen.append(str(shown))
    return ", ".join(seen) or NOT_RECORDED


def _image_size(job: Job) -> str | None:
    size = (job.results.get("preprocess") or {}).get("input_size")
    return f"{size[0]}×{size[1]} px" if size else None


def _model(job: Job) -> str | None:
    name = job.results.get("model")
    if not name:
        return None
    size, pretrained = _image_size(job), setting(job, "model.pretrained")
    details = [d for d in (size, {True: "pretrained", False: "from scratch"}.get(pretrained)) if d]
    stem = setting(job, "model.stem")
    if stem:
        details.append(f"{stem} stem")
    return f"{name} ({', '.join(details)})" if details else name


def _data(job: Job) -> str | None:
    name = job.results.get("dataset")
    if not name:
        return None
    subset = [
        f"{key}={value}" for key in ("fraction", "per_class") if (value := setting(job, f"dataset.{key}")) is not None
    ]
    classes = len((job.results.get("data") or {}).get("classes") or [])
    parts = [name] + ([", ".join(subset)] if subset else []) + ([f"{classes} classes"] if classes else [])
    return "; ".join(parts)


def _splits(job: Job) -> str | None:
    sizes = (job.results.get("data") or {}).get("sizes")
    return ", ".join(f"{split} {n:,}" for split, n in sizes.items()) if sizes else None


def _epochs(job: Job) -> str | None:
    trained, planned = job.results.get("epochs"), setting(job, "trainer.max_epochs")
    if trained is None and planned is None:
        return None
    if job.results.get("finetune") and (job.results.get("params") or {}).get("trainable") == 0:
        return "0 (trains nothing)"
    return f"{trained if trained is not None else MISSING} of {planned if planned is not None else MISSING}"


def _optimizer(job: Job) -> str | None:
    head, backbone = setting(job, "optimizer.lr_head"), setting(job, "optimizer.lr_backbone")
    if head is None or backbone is None:
        return None
    algorithm = setting(job, "optimizer.algorithm") or "adamw"  # runs saved before the setting existed used AdamW
    return f"{ALGORITHM_NAMES.get(algorithm, algorithm)}, head {head:g}, backbone {backbone:g}"


def _optimizers(jobs: list[Job]) -> str:
    """One optimizer for all jobs, or each strategy's (its own recipe, configs/recipe/) named by the strategy."""
    if len({_optimizer(job) for job in jobs}) <= 1:
        return _distinct(jobs, _optimizer)
    return _distinct(jobs, lambda j: f"{j.results.get('finetune')}: {_optimizer(j)}" if _optimizer(j) else None)


def _seeds(job: Job) -> str | None:
    """The run's seed, or a tuned job's seeds (protocol=tuned trains one run per seed)."""
    seed = job.results.get("seed")
    return ", ".join(map(str, seed)) if isinstance(seed, list) else seed


def _precision(job: Job) -> str | None:
    """What the run trained at (``trainer.precision=auto`` resolved), else the configured value."""
    used = (job.results.get("precision") or {}).get("used")
    return used or setting(job, "trainer.precision")


def _commit(job: Job) -> str | None:
    prov = job.results.get("provenance") or {}
    commit = prov.get("commit")
    if not commit:
        return None
    return commit[:10] + (" with uncommitted changes" if prov.get("dirty") else " (clean)")


def _versions(job: Job) -> str | None:
    versions = job.results.get("versions") or {}
    shown = [f"{name} {versions[name]}" for name in VERSIONS if versions.get(name)]
    return ", ".join(shown) or None


def _machine(job: Job) -> str | None:
    machine = (job.results.get("provenance") or {}).get("machine") or {}
    if not machine:
        return None
    cpu = f"{machine.get('cpu') or 'CPU'}, {machine.get('cores')} cores"
    return f"{machine['gpu']}; {cpu}" if machine.get("gpu") else cpu


def _total_s(job: Job) -> float | None:
    return (job.results.get("timing") or {}).get("total_s")


def header(jobs: list[Job]) -> list[tuple[str, str]]:
    """(field, value) rows: task, model, data, splits, strategies, epochs, optimizer and learning rates, precision,
    seeds, commit, versions, machine, wall time."""
    times = [t for job in jobs if (t := _total_s(job)) is not None]
    if len(jobs) == 1:
        wall = duration(times[0]) if times else NOT_RECORDED
    else:
        wall = (
            f"{duration(sum(times))} over {len(times)} jobs (longest {duration(max(times))})" if times else NOT_RECORDED
        )
    return [
        ("Task", _distinct(jobs, lambda j: setting(j, "task_name"))),
        ("Model", _distinct(jobs, _model)),
        ("Data", _distinct(jobs, _data)),
        ("Split sizes", _distinct(jobs, _splits)),
        ("Strategy" if len(jobs) == 1 else "Strategies", _distinct(jobs, lambda j: j.results.get("finetune"))),
        ("Epochs trained", _distinct(jobs, _epochs)),
        ("Optimizer", _optimizers(jobs)),
        ("Precision", _distinct(jobs, _precision)),
        ("Seed" if len(jobs) == 1 else "Seeds", _distinct(jobs, _seeds)),
        ("Commit", _distinct(jobs, _commit)),
        ("Versions", _distinct(jobs, _versions)),
        ("Machine", _distinct(jobs, _machine)),
        ("Wall time", wall),
    ]


def title(jobs: list[Job], swept: list[str]) -> str:
    """What was run, in a line: task, model, data; the swept settings (a sweep) or the strategy (one run)."""
    if not jobs:
        return "No jobs found"
    task = _distinct(jobs, lambda j: setting(j, "task_name"))
    models = _distinct(jobs, lambda j: j.results.get("model"))
    data = _distinct(jobs, lambda j: j.results.get("dataset"))
    what = f"{models} on {data}" if NOT_RECORDED not in (models, data) else ""
    if len(jobs) == 1:
        job = jobs[0]
        detail = f"finetune={job.results.get('finetune')}" if job.results.get("finetune") else job.label
        parts = [what, detail]
    else:
        parts = [what, f"{len(jobs)} jobs" + (f" sweeping {', '.join(swept)}" if swept else "")]
    line = ", ".join(p for p in parts if p)
    return f"{task}: {line}" if task != NOT_RECORDED else line[:1].upper() + line[1:]
