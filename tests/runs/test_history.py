"""history.csv (one row per epoch) and the learning-curve figure every trained run writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from gnr650.interpret import learning_curves
from gnr650.interpret.index import ArtifactKind, artifacts_dir, find_artifacts, read_index
from gnr650.interpret.learning_curves import learning_curve_figure
from gnr650.runs.history import HISTORY_NAME, epoch_history
from gnr650.train import train
from gnr650.training.progress import EpochLog
from tests.helpers import make_cfg

RUN = [
    "debug=smoke",
    "model=resnet18",
    "finetune=full",
    "trainer.max_epochs=3",
    "logger=csv",
    "callbacks=default",
    "batch_size=8",
    "dataset.per_class=8",  # 4 classes: 4 steps an epoch
    "dataset.val_per_class=4",
    "dataset.test_per_class=4",
    "callbacks.model_checkpoint.mode=min",  # the worst epoch is evaluated: not the last, which a slip would mark
    f"+callbacks.probe._target_={__name__}.EpochProbe",
]


class EpochProbe(EpochLog):
    """The values the module logged, per epoch counted from 1, as the console's epoch lines read them."""

    latest: EpochProbe | None = None

    def __init__(self):
        super().__init__()
        EpochProbe.latest = self


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[dict], list[Figure]]:
    """The run's directory, its logged epochs and the learning-curve figures it drew."""
    out, drawn = tmp_path_factory.mktemp("run"), []

    def record(*args):
        drawn.append(learning_curve_figure(*args))
        return drawn[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learning_curves, "learning_curve_figure", record)
        train(make_cfg(RUN, out))
    return out, EpochProbe.latest.epochs, drawn


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def reduce_in_file_order(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """An independent reduction of Lightning's metrics.csv: the learning-rate rows (no epoch) precede the rows of
    the epoch they were logged at the start of; the final evaluation's row (final/...) is no epoch's."""
    epochs: dict[int, dict[str, list[float]]] = {}
    pending: list[dict[str, float]] = []
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith("final/")}
        if "epoch" not in row:
            pending.append(row)
            continue
        if set(row) == {"epoch", "step"}:
            continue
        values = epochs.setdefault(int(row["epoch"]) + 1, {})
        for kept in pending + [row]:
            for k, v in kept.items():
                values.setdefault(k, []).append(v)
        pending = []
    return [
        {
            "epoch": e,
            "step": max(v["step"]) + 1,
            **{k: sum(x) / len(x) for k, x in v.items() if k not in ("epoch", "step")},
        }
        for e, v in sorted(epochs.items())
    ]


def test_history_has_one_row_per_epoch_with_all_its_values(run):
    out, logged, _ = run
    history = read_csv(out / HISTORY_NAME)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    expected = reduce_in_file_order(read_csv(out / "metrics.csv"))
    assert [sorted(row) for row in history] == [sorted(row) for row in expected]
    for row, ref in zip(history, expected):
        assert row == pytest.approx(ref, rel=1e-12), row["epoch"]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr-AdamW/head"} <= set(history[0])
    for row, epoch in zip(history, logged):  # the module's own values, as the console's epoch lines show them
        assert row["epoch"] == epoch["epoch"]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert row[key] == pytest.approx(epoch[key], rel=1e-6), (row["epoch"], key)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert history[-1]["step"] == last["global_step"] == 12  # steps completed, as checkpoints count them


def test_learning_curves_are_indexed_and_mark_the_evaluated_epoch(run):
    out, _, drawn = run
    (figure,) = find_artifacts(artifacts_dir(out), ArtifactKind.LEARNING_CURVES_PLOT)
    assert Image.open(figure).format == "PNG"
    (record,) = [e for e in read_index(artifacts_dir(out)) if e["kind"] == ArtifactKind.LEARNING_CURVES_PLOT]
    results = json.loads((out / "results.json").read_text())
    best = torch.load(results["checkpoint"], weights_only=True)
    assert record["epoch"] == best["epoch"] + 1  # the file stores Lightning's epoch, counted from 0
    assert record["epoch"] < results["epochs"] == 3  # otherwise this test could not tell the two apart
    assert Path(results["checkpoint"]).name.startswith(f"epoch{record['epoch']:03d}-")  # its name counts from 1
    (fig,) = drawn  # the figure saved marks the checkpoint's epoch, on both panels
    marks = [line.get_xdata() for ax in fig.axes for line in ax.lines if line.get_label().startswith("evaluated")]
    assert [tuple(x) for x in marks] == [(best["epoch"] + 1,) * 2] * 2


def test_learning_curve_figure_draws_train_and_val_and_marks_the_epoch():
    history = [
        {"epoch": e, "train/acc": a, "val/acc": v, "train/loss": 1 / e, "val/loss": 0.5 + e / 10}
        for e, a, v in ((1, 0.5, 0.4), (2, 0.9, 0.6), (3, 1.0, 0.55))
    ]
    fig = learning_curve_figure(history, 2, "title")
    ax_acc, ax_loss = fig.axes
    curves = {ax: {line.get_label(): list(line.get_ydata()) for line in ax.lines} for ax in (ax_acc, ax_loss)}
    assert curves[ax_acc]["Train"] == pytest.approx([50, 90, 100]) and curves[ax_loss]["Train"] == [1, 0.5, 1 / 3]
    assert curves[ax_acc]["Validation"] == pytest.approx([40, 60, 55])  # accuracy in %
    assert curves[ax_loss]["Validation"] == pytest.approx([0.6, 0.7, 0.8])
    for ax in (ax_acc, ax_loss):
        assert [tuple(line.get_xdata()) for line in ax.lines if line.get_label().startswith("evaluated")] == [(2, 2)]
        assert list(ax.get_xticks()) == [1, 2, 3]
    (arrow,) = [t for t in ax_acc.texts if not t.get_text()]
    assert [*arrow.xy, *arrow.xyann] == pytest.approx([2, 90, 2, 60])  # from val to train at epoch 2
    (gap,) = [t.get_text() for t in ax_acc.texts if t.get_text()]
    # 90% - 60% at the evaluated epoch 2, not at the last (100% - 55%)
    assert gap == "train − val\n+30.0 pts\n(during the epoch)"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["Train", "Validation", "evaluated weights: end (epoch 2)"]


def test_epoch_history_reduces_lightning_rows():
    rows = [
        {"epoch": "", "step": "0", "lr-AdamW": "0.1", "train/loss": "", "val/acc": "", "final/test/acc": ""},
        {"epoch": "0", "step": "1", "lr-AdamW": "", "train/loss": "3.0", "val/acc": "", "final/test/acc": ""},
        {"epoch": "0", "step": "3", "lr-AdamW": "", "train/loss": "1.0", "val/acc": "", "final/test/acc": ""},
        {"epoch": "", "step": "4", "lr-AdamW": "0.2", "train/loss": "", "val/acc": "", "final/test/acc": ""},
        {"epoch": "1", "step": "7", "lr-AdamW": "", "train/loss": "", "val/acc": "0.5", "final/test/acc": ""},
        {"epoch": "1", "step": "7", "lr-AdamW": "", "train/loss": "0.5", "val/acc": "", "final/test/acc": ""},
        {"epoch": "2", "step": "8", "lr-AdamW": "", "train/loss": "", "val/acc": "", "final/test/acc": "0.4"},
    ]
    assert epoch_history(rows) == [
        {"epoch": 1, "step": 4, "lr-AdamW": 0.1, "train/loss": 2.0},  # no validation in epoch 1; the steps' mean
        {"epoch": 2, "step": 8, "lr-AdamW": 0.2, "train/loss": 0.5, "val/acc": 0.5},
    ]
