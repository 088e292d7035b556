"""A run's learning curves (``artifacts/learning_curves.png``): train and validation accuracy and loss per epoch
from its history (``gnr650.runs.history``), the epoch of the evaluated weights marked."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gnr650.interpret.figures import save_figure
from gnr650.interpret.index import PHASE_END, ArtifactKind, append_to_index, entry

LEARNING_CURVES_PATH = "learning_curves.png"
SPLITS = (("train", "Train", "C0", "--"), ("val", "Validation", "C1", "-"))


def learning_curve_figure(history: list[dict[str, float]], evaluated_epoch: int | None, title: str) -> Figure:
    """Accuracy (%) and loss per epoch, train dashed and validation solid; a vertical line at
    ``evaluated_epoch``, labelled as the exports label the final evaluation, ``end (epoch N)``."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2, sharex=True)
    for split, name, colour, style in SPLITS:
        for ax, metric, scale in ((ax_acc, "acc", 100.0), (ax_loss, "loss", 1.0)):
            points = [(row["epoch"], scale * row[f"{split}/{metric}"]) for row in history if f"{split}/{metric}" in row]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, style, marker="o", ms=3, color=colour, label=name)
    if evaluated_epoch is not None:
        label = f"evaluated weights: end (epoch {evaluated_epoch})"
        for ax in (ax_acc, ax_loss):
            ax.axvline(evaluated_epoch, color="0.3", lw=1.5, ls=":", label=label)
        _mark_gap(ax_acc, history, evaluated_epoch)
    losses = [v for row in history for k, v in row.items() if k.endswith("/loss") and v > 0]
    if losses and max(losses) / min(losses) > 100:  # an overfitting run's train loss falls by orders of magnitude
        ax_loss.set_yscale("log")
    last = max((int(row["epoch"]) for row in history), default=1)
    ax_acc.set(title="Accuracy", xlabel="Epoch", ylabel="Accuracy (%)")
    ax_loss.set(
        title="Loss",
        xlabel="Epoch",
        ylabel="Cross-entropy loss" + (" (log scale)" if ax_loss.get_yscale() == "log" else ""),
    )
    ticks = [1] + [int(t) for t in MaxNLocator(nbins=10, integer=True).tick_values(1, last) if 1 < t <= last]
    for ax in (ax_acc, ax_loss):
        ax.set_xlim(0.5, last + 0.5)
        ax.set_xticks(ticks)  # completed epochs: the first point is epoch 1
        ax.grid(alpha=0.3)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    fig.suptitle(title)
    return fig


def _mark_gap(ax, history: list[dict[str, float]], epoch: int) -> None:
    """An arrow from validation to train accuracy at ``epoch``, labelled with their difference: how far the
    evaluated weights overfit (study 1's finding), read off without estimating it from the curves."""
    row = next((row for row in history if row["epoch"] == epoch), {})
    if "train/acc" not in row or "val/acc" not in row:
        return
    train, val = 100 * row["train/acc"], 100 * row["val/acc"]
    ax.annotate("", xy=(epoch, train), xytext=(epoch, val), arrowprops={"arrowstyle": "<->", "color": "0.3"})
    last = max(int(r["epoch"]) for r in history)
    right = epoch > (1 + last) / 2  # the label on the side with room
    ax.annotate(
        f"train − val\n{train - val:+.1f} pts\n(during the epoch)",
        xy=(epoch, (train + val) / 2),
        xytext=(-6 if right else 6, 0),
        textcoords="offset points",
        ha="right" if right else "left",
        va="center",
        fontsize=9,
        color="0.2",
    )


def export_learning_curves(
    artifacts_dir: str | Path, history: list[dict[str, float]], evaluated_epoch: int | None, title: str
) -> dict:
    """Write ``learning_curves.png`` into ``artifacts_dir`` and list it in the index; returns its entry."""
    save_figure(learning_curve_figure(history, evaluated_epoch, title), Path(artifacts_dir) / LEARNING_CURVES_PATH)
    record = entry(ArtifactKind.LEARNING_CURVES_PLOT, LEARNING_CURVES_PATH, phase=PHASE_END, epoch=evaluated_epoch)
    append_to_index(artifacts_dir, [record])
    return record
