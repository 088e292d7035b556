"""Comparison figures across the jobs of a multirun: accuracy, learning curves, kernel norms.

Figures are built with matplotlib's object API (no pyplot), so no backend or global
state is touched; each builder returns None when no job has the data it needs.
A job keeps the same style (``job_style(index)``: colour, line style, marker) in every figure.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from adjustText import adjust_text
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gnr650.summary.collect import Job, format_label, read_curves, read_kernel_norms
from gnr650.summary.significance import t_interval
from gnr650.summary.tables import ACCURACIES

# tab10, then tab20's light shade of each: 20 distinct colours; each round of 10 jobs also gets its own line style.
PALETTE = [to_hex(c) for c in colormaps["tab10"].colors] + [to_hex(c) for c in colormaps["tab20"].colors[1::2]]
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 shapes against 10 colours: neighbours and repeats differ


@dataclass(frozen=True)
class JobStyle:
    """How one job is drawn in every figure of the summary."""

    color: str
    linestyle: str
    marker: str
    size: float

    def line(self) -> dict:
        """Keyword arguments of ``Axes.plot`` for this job's line: hollow markers, large and small in turn, so a
        line drawn over an identical one still shows the other's markers."""
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker, "ms": self.size, "mfc": "none"}


def job_style(index: int) -> JobStyle:
    """The style of the job at ``index`` in the multirun: distinct (colour, line style, marker) for any number."""
    return JobStyle(
        PALETTE[index % 20], LINESTYLES[(index // 10) % 4], MARKERS[index % len(MARKERS)], 7.0 if index % 2 else 4.5
    )


def identical_note(series: dict[str, np.ndarray]) -> str:
    """'b, c = a' for every series equal to an earlier one (drawn over it, so it would hide it), '' when none
    is; labels that all set the same single key ('finetune=a') are shortened to their values."""
    notes: dict[str, list[str]] = {}
    for i, (label, values) in enumerate(series.items()):
        earlier = [
            other
            for other, prior in list(series.items())[:i]
            if np.shape(prior) == np.shape(values) and np.allclose(prior, values, equal_nan=True)
        ]
        if earlier:
            notes.setdefault(earlier[0], []).append(label)
    if not notes:
        return ""
    named = [label for first, same in notes.items() for label in (first, *same)]
    one_key = len({label.partition("=")[0] for label in named}) == 1 and all(label.count("=") == 1 for label in named)
    key = named[0].partition("=")[0] + " " if one_key else ""
    short = (lambda label: label.partition("=")[2]) if one_key else (lambda label: label)
    return key + "; ".join(f"{', '.join(map(short, same))} = {short(first)}" for first, same in notes.items())


def titled(ax, title: str, series: dict[str, np.ndarray], fontsize: float = 10) -> None:
    """The panel title, with a line (wrapped to the panel's width) naming the lines drawn over identical ones."""
    note = identical_note(series)
    if note:
        width = ax.get_position().width * ax.figure.get_figwidth()  # inches
        title += "\n" + textwrap.fill(f"(identical lines, drawn over each other: {note})", int(width * 12))
    ax.set_title(title, fontsize=fontsize)


def job_legend(fig: Figure, handles: dict[str, object]) -> None:
    """One legend for the whole figure, outside the axes (right), so it never covers data."""
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)


def tick_label(job: Job) -> str:
    """A job label broken onto one line per override, for axis ticks and legends."""
    text = job.label.replace(", ", "\n")
    return text if job.ok else f"{text}\n({job.status})"


def accuracy_figure(jobs: list[Job]) -> Figure | None:
    """Grouped bars of train/val/test accuracy, one group per job (its marker under the group)."""
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
    for i in x:  # the job's own marker under its bars, as in every other figure
        style = job_style(int(i))
        ax.plot(i, -0.04, style.marker, color=style.color, ms=7, transform=ax.get_xaxis_transform(), clip_on=False)
    ax.tick_params(axis="x", pad=14)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Train, validation and test accuracy per job")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def strategy_groups(jobs: list[Job]) -> dict[str, list[tuple[int, int, float]]]:
    """The completed jobs with a parameter count and test accuracy, grouped by their swept settings other than
    the seed: {label: [(job index, trainable parameters, test accuracy %), ...]}, one entry per seed."""
    groups: dict[str, list[tuple[int, int, float]]] = {}
    for i, job in enumerate(jobs):
        trainable, acc = (job.results.get("params") or {}).get("trainable"), job.metric("test/acc")
        if job.ok and trainable is not None and acc is not None:
            label = format_label({k: v for k, v in job.swept.items() if k != "seed"}) or job.label
            groups.setdefault(label, []).append((i, trainable, 100 * acc))
    return groups


def params_accuracy_figure(jobs: list[Job]) -> Figure | None:
    """Test accuracy against trainable parameters (log axis; 0 on its linear stretch), one point per swept
    setting other than the seed (per strategy, in the style of its first job): the mean over its completed
    seeds, the std as an error bar. Labels are moved apart (adjustText) so none overprints another."""
    groups = strategy_groups(jobs)
    if not groups:
        return None
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    texts, xs, ys = [], [], []
    for name, points in groups.items():
        first, counts, accs = zip(*points)
        x, y = float(np.mean(counts)), float(np.mean(accs))
        style = job_style(first[0])
        yerr = float(np.std(accs, ddof=1)) if len(accs) > 1 else None
        ax.errorbar(x, y, yerr=yerr, fmt=style.marker, ms=7, color=style.color, capsize=3)
        texts.append(ax.text(x, y, name, fontsize=8))
        xs.append(x)
        ys.append(y)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("Trainable parameters (log; 0 on the linear stretch)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title("Test accuracy against trainable parameters, per strategy")
    ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    place_labels(ax, texts, xs, ys)
    return fig


def place_labels(ax, texts: list, xs: list[float], ys: list[float]) -> None:
    """Move the point labels ``texts`` apart (adjustText) so that none overprints another. Call it when the figure
    is complete: its layout is settled first, then frozen, so the labels keep the pixel positions they get."""
    FigureCanvasAgg(ax.figure)  # adjustText measures the labels with the figure's renderer
    ax.figure.canvas.draw()
    ax.figure.set_layout_engine("none")
    adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6})


def curves_figure(jobs: list[Job]) -> Figure | None:
    """Accuracy and loss per epoch (rows) on the train and validation split (columns), one line per job in its
    style, from each job's history (``read_curves``); epochs are completed epochs, counted from 1.

    A job without training epochs (the frozen strategy) has no curve; its final validation accuracy is drawn
    as a horizontal line in the validation accuracy panel instead.
    """
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    legend: dict[str, object] = {}
    panels = {(row, col): {} for row in range(2) for col in range(2)}
    for i, job in enumerate(jobs):
        curves = read_curves(job)
        name = job.label if job.ok else f"{job.label} ({job.status})"
        lines = []
        for col, split in enumerate(("train", "val")):
            acc = curves.get(f"{split}/acc", {})
            loss = curves.get(f"{split}/loss") or curves.get(f"{split}/loss_epoch", {})
            for row, (series, scale) in enumerate(((acc, 100.0), (loss, 1.0))):
                if series:
                    values = [scale * v for v in series.values()]
                    lines += axes[row, col].plot(list(series), values, **job_style(i).line())
                    panels[row, col][name] = np.array([list(series), values])
        if not lines and (final := job.metric("val/acc")) is not None:
            style = job_style(i)
            lines.append(axes[0, 1].axhline(100 * final, color=style.color, ls=style.linestyle, lw=1.2))
            name += " (no training: final val acc)"
        if lines:
            legend[name] = lines[0]
    if not legend:
        return None
    for (row, col), ax in np.ndenumerate(axes):
        split = ("Train", "Validation")[col]
        titled(ax, f"{split} {('accuracy', 'loss')[row]}", panels[row, col])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if row == 1:
            ax.set_xlabel("Epoch (completed, from 1)")
    axes[0, 0].set_ylabel("Accuracy (%)")
    axes[1, 0].set_ylabel("Cross-entropy loss")
    job_legend(fig, legend)
    return fig


def kernel_norm_figure(jobs: list[Job]) -> Figure | None:
    """Per-layer mean kernel norm at the last phase (± std band) and its ratio to the first phase."""
    norms = [(i, job, read_kernel_norms(job)) for i, job in enumerate(jobs)]
    norms = [(i, job, phases) for i, job, phases in norms if phases]
    if not norms:
        return None
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    ax_end, ax_ratio = fig.subplots(1, 2)
    layers: list[str] = []
    ends, ratios, legend = {}, {}, {}
    for i, job, phases in norms:
        first, last = list(phases.values())[0], list(phases.values())[-1]
        if len(last) > len(layers):
            layers = [str(row["layer"]) for row in last]
        x = np.arange(len(last))
        mean = np.array([row["mean"] for row in last], dtype=float)
        std = np.array([row["std"] for row in last], dtype=float)
        style = job_style(i)
        (legend[job.label],) = ax_end.plot(x, mean, **style.line())
        ax_end.fill_between(x, mean - std, mean + std, color=style.color, alpha=0.12)
        ends[job.label] = mean
        if len(phases) > 1 and len(first) == len(last):
            start = np.array([row["mean"] for row in first], dtype=float)
            ax_ratio.plot(x, mean / start, **style.line())
            ratios[job.label] = mean / start
    last_phase = list(norms[0][2])[-1]
    first_phase = list(norms[0][2])[0]
    titled(ax_end, f"Mean kernel L2 norm per conv layer ({last_phase}; band: ± std across kernels)", ends)
    titled(ax_ratio, f"Change of mean kernel norm ({last_phase} / {first_phase})", ratios)
    ax_end.set_ylabel("Kernel L2 norm")
    ax_ratio.set_ylabel("Ratio")
    ax_ratio.axhline(1.0, color="grey", lw=0.8)
    for ax in (ax_end, ax_ratio):
        ax.set_xticks(np.arange(len(layers)), layers, rotation=90, fontsize=7)
        ax.set_xlabel("Conv layer (module name, network order)")
        ax.grid(alpha=0.3)
    job_legend(fig, legend)
    return fig


def numeric_swept_keys(jobs: list[Job]) -> list[str]:
    """The swept settings other than the seed whose values are all numbers, with at least two distinct ones."""
    keys = []
    for key in dict.fromkeys(k for job in jobs for k in job.swept if k != "seed"):
        values = [_number(job.swept.get(key)) for job in jobs]
        if all(v is not None for v in values) and len(set(values)) > 1:
            keys.append(key)
    return keys


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def swept_value_figure(jobs: list[Job], key: str) -> Figure | None:
    """Test accuracy against the numeric swept setting ``key`` (a data-efficiency curve for a training-set size):
    one line per other swept setting except the seed (per strategy), in the style of its first job; each point the
    mean over the completed seeds with its Student-t 95% interval as an error bar (none from one seed). The x axis is
    logarithmic when the values span more than 10x."""
    lines: dict[str, tuple[int, dict[float, list[float]]]] = {}
    for i, job in enumerate(jobs):
        acc, x = job.metric("test/acc"), _number(job.swept.get(key))
        if not job.ok or acc is None or x is None:
            continue
        label = format_label({k: v for k, v in job.swept.items() if k not in ("seed", key)}) or "all jobs"
        first, points = lines.setdefault(label, (i, {}))
        points.setdefault(x, []).append(100 * acc)
    if not lines:
        return None
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    xs_all = []
    for label, (first, points) in lines.items():
        xs = sorted(points)
        means = [float(np.mean(points[x])) for x in xs]
        bounds = [t_interval(points[x]) or (m, m) for x, m in zip(xs, means)]  # in %, as the points
        errors = np.array([[m - low, high - m] for m, (low, high) in zip(means, bounds)]).T
        ax.errorbar(xs, means, yerr=errors, capsize=3, label=label, **job_style(first).line())
        xs_all += xs
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
        ax.set_xscale("log")
    ax.set_xticks(sorted(set(xs_all)), [f"{x:g}" for x in sorted(set(xs_all))])
    ax.minorticks_off()
    ax.set_xlabel(key)
    ax.set_ylabel("Test accuracy (%)")
    seeds = max(len(v) for _, points in lines.values() for v in points.values())
    ax.set_title(
        f"Test accuracy against {key}\n"
        + (f"(mean and Student-t 95% interval over up to {seeds} seeds)" if seeds > 1 else "(one run each)")
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig
