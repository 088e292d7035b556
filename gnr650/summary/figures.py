"""Comparison figures across the jobs of a multirun: accuracy, learning curves, kernel norms.

Figures are built with matplotlib's object API (no pyplot), so no backend or global
state is touched; each builder returns None when no job has the data it needs.
A job keeps the same colour (`C<index>`) in every figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gnr650.summary.collect import Job, format_label, read_curves, read_kernel_norms
from gnr650.summary.tables import ACCURACIES


def colour(index: int) -> str:
    return f"C{index % 10}"


def tick_label(job: Job) -> str:
    """A job label broken onto one line per override, for axis ticks and legends."""
    text = job.label.replace(", ", "\n")
    return text if job.ok else f"{text}\n({job.status})"


def accuracy_figure(jobs: list[Job]) -> Figure | None:
    """Grouped bars of train/val/test accuracy, one group per job."""
    if not jobs:
        return None
    fig = Figure(figsize=(max(6.0, 1.4 * len(jobs) + 2.5), 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(jobs))
    width = 0.8 / len(ACCURACIES)
    for i, (name, title) in enumerate(ACCURACIES):
        values = [100 * v if (v := job.metric(name)) is not None else np.nan for job in jobs]
        bars = ax.bar(x + (i - 1) * width, values, width, label=title, color=f"C{i}", alpha=0.85)
        labels = ["" if np.isnan(v) else f"{v:.1f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    for xi, job in zip(x, jobs):
        if not job.ok:
            ax.text(xi, 2, job.status, rotation=90, ha="center", va="bottom", color="firebrick")
    ax.set_xticks(x, [tick_label(j) for j in jobs], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Train, validation and test accuracy per job")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def params_accuracy_figure(jobs: list[Job]) -> Figure | None:
    """Test accuracy against trainable parameters (log axis; 0 on its linear stretch), one point per swept
    setting other than the seed (per strategy): the mean over its completed seeds, the std as an error bar."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for job in jobs:
        trainable, acc = (job.results.get("params") or {}).get("trainable"), job.metric("test/acc")
        if job.ok and trainable is not None and acc is not None:
            label = format_label({k: v for k, v in job.swept.items() if k != "seed"}) or job.label
            groups.setdefault(label, []).append((trainable, 100 * acc))
    if not groups:
        return None
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(groups.items()):
        counts, accs = zip(*points)
        x, y = float(np.mean(counts)), float(np.mean(accs))
        ax.errorbar(x, y, yerr=float(np.std(accs, ddof=1)) if len(accs) > 1 else None, fmt="o", color=colour(i))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("Trainable parameters (log)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title("Test accuracy against trainable parameters, per strategy")
    ax.grid(alpha=0.3)
    return fig


def curves_figure(jobs: list[Job]) -> Figure | None:
    """Train (dashed) and validation (solid) accuracy and loss per epoch for all jobs on shared axes, one colour
    per job, from each job's history (``read_curves``).

    A job without training epochs (the frozen strategy) has no curve; its final
    validation accuracy is drawn as a dotted horizontal line instead.
    """
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2, sharex=True)
    legend: dict[str, object] = {}
    for i, job in enumerate(jobs):
        curves = read_curves(job)
        name = job.label if job.ok else f"{job.label} ({job.status})"
        lines = []
        for split, style in (("val", "o-"), ("train", "s--")):
            acc = curves.get(f"{split}/acc", {})
            loss = curves.get(f"{split}/loss") or curves.get(f"{split}/loss_epoch", {})
            if acc:
                lines += ax_acc.plot(list(acc), [100 * v for v in acc.values()], style, ms=3, color=colour(i))
            if loss:
                lines += ax_loss.plot(list(loss), list(loss.values()), style, ms=3, color=colour(i))
        if not lines and (final := job.metric("val/acc")) is not None:
            lines.append(ax_acc.axhline(100 * final, ls=":", color=colour(i)))
            name += " (no training)"
        if lines:
            legend[name] = lines[0]
    if not legend:
        return None
    key = "solid: validation, dashed: train"
    ax_acc.set(title=f"Accuracy per epoch ({key})", xlabel="Epoch", ylabel="Accuracy (%)")
    ax_loss.set(title=f"Loss per epoch ({key})", xlabel="Epoch", ylabel="Loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(4, len(legend)), fontsize=8)
    return fig


def kernel_norm_figure(jobs: list[Job]) -> Figure | None:
    """Per-layer mean kernel norm at the last phase (± std band) and its ratio to the first phase."""
    norms = [(i, job, read_kernel_norms(job)) for i, job in enumerate(jobs)]
    norms = [(i, job, phases) for i, job, phases in norms if phases]
    if not norms:
        return None
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    ax_end, ax_ratio = fig.subplots(1, 2)
    layers: list[str] = []
    for i, job, phases in norms:
        first, last = list(phases.values())[0], list(phases.values())[-1]
        if len(last) > len(layers):
            layers = [str(row["layer"]) for row in last]
        x = np.arange(len(last))
        mean = np.array([row["mean"] for row in last], dtype=float)
        std = np.array([row["std"] for row in last], dtype=float)
        ax_end.plot(x, mean, "o-", ms=3, color=colour(i), label=job.label)
        ax_end.fill_between(x, mean - std, mean + std, color=colour(i), alpha=0.15)
        if len(phases) > 1 and len(first) == len(last):
            start = np.array([row["mean"] for row in first], dtype=float)
            ax_ratio.plot(x, mean / start, "o-", ms=3, color=colour(i))
    last_phase = list(norms[0][2])[-1]
    first_phase = list(norms[0][2])[0]
    ax_end.set(title=f"Mean kernel L2 norm per conv layer ({last_phase})", ylabel="Kernel norm")
    ax_ratio.set(title=f"Change of mean kernel norm ({last_phase} / {first_phase})", ylabel="Ratio")
    ax_ratio.axhline(1.0, color="grey", lw=0.8)
    for ax in (ax_end, ax_ratio):
        ax.set_xticks(np.arange(len(layers)), layers, rotation=90, fontsize=7)
        ax.set_xlabel("Conv layer (network order)")
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(4, len(norms)), fontsize=8)
    return fig
