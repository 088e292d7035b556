"""The summary figures read right: one style per job in every figure, labels apart, identical lines named,
attention maps on the patch grid with a colour bar, and captions that say only what is true."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from gnr650.summary import attention as attention_figures
from gnr650.summary import collect_jobs, writer
from gnr650.summary.changes import observations
from gnr650.summary.figures import curves_figure, job_style, kernel_norm_figure, params_accuracy_figure
from gnr650.summary.report import FigureEntry
from tests.summary.jobs import make_job


def _legend_styles(fig) -> dict[str, tuple]:
    """{job label: (colour, line style, marker)} of the figure legend's entries."""
    (legend,) = fig.legends
    return {
        text.get_text().split(" (")[0]: (handle.get_color(), handle.get_linestyle(), handle.get_marker())
        for text, handle in zip(legend.get_texts(), legend.legend_handles)
    }


def test_24_jobs_get_24_distinct_styles():
    styles = [job_style(i) for i in range(24)]
    assert len({(s.color, s.linestyle, s.marker) for s in styles}) == 24
    assert len({s.color for s in styles[:20]}) == 20  # colour alone tells the first 20 apart
    assert job_style(0).color != job_style(10).color  # "last" and "knn" of the zoo


def test_a_job_has_the_same_style_in_every_figure(tmp_path: Path):
    """Job 0 has no kernel norms: the kernel-norm figure must still draw job n in job n's style."""
    for num in range(12):
        make_job(tmp_path, num, [f"finetune=s{num}"], acc=(0.9, 0.5 + num / 50, 0.7), kernel_norms=num > 0)
    jobs = collect_jobs(tmp_path)
    curves, norms = _legend_styles(curves_figure(jobs)), _legend_styles(kernel_norm_figure(jobs))
    assert len(curves) == 12 and len(norms) == 11
    for label, style in norms.items():
        assert style == curves[label]
    assert len(set(curves.values())) == 12
    expected = job_style(5)
    assert curves["finetune=s5"] == (expected.color, expected.linestyle, expected.marker)


def test_params_accuracy_labels_do_not_overlap(tmp_path: Path):
    """Seven strategies at nearly the same point (as 0-parameter and head-only strategies are), one far off."""
    for num in range(8):
        job = make_job(tmp_path, num, [f"finetune=strategy_{num}"], acc=(0.9, 0.8, 0.9 if num == 7 else 0.7))
        results = json.loads((job / "results.json").read_text())
        results["params"]["trainable"] = 10**6 if num == 7 else 1_930 + num
        (job / "results.json").write_text(json.dumps(results))
    fig = params_accuracy_figure(collect_jobs(tmp_path))
    fig.savefig(io.BytesIO(), format="png", dpi=100)  # as the summary writes it
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in fig.axes[0].texts]
    assert len(boxes) == 8
    assert not [(a, b) for a, b in itertools.combinations(range(8), 2) if boxes[a].overlaps(boxes[b])]


def test_attention_grid_is_nearest_on_the_patch_grid_with_a_colour_bar_and_the_verdict(tmp_path: Path):
    make_job(tmp_path, 0, ["finetune=last"], attention=0.5, attention_shape={"predictions": False})
    make_job(tmp_path, 1, ["finetune=full"], attention=1.0)
    npz = tmp_path / "1" / "artifacts" / "attention.npz"
    with np.load(npz) as z:
        arrays = dict(z)
    arrays["predictions"] = np.array([0, 0])  # image 0 right, image 1 (class 1) wrong
    np.savez(npz, **arrays)
    attentions = attention_figures.load_attention(collect_jobs(tmp_path))
    assert attentions[0].predictions is None  # a file written before predictions were exported

    fig = attention_figures.class_figure(attentions, "Forest")
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == attention_figures.ATTENTION_CMAP]
    assert heat and all(im.get_interpolation() == "nearest" for im in heat)
    assert {im.get_array().shape for im in heat} == {(4, 4)}  # one flat cell per patch, not a resampled image
    (bar,) = [ax for ax in fig.axes if "min–max" in ax.get_ylabel()]
    assert bar.get_ylim() == (0.0, 1.0)
    verdicts = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert verdicts == ["wrong: AnnualCrop"]  # only the job with predictions, and it got Forest wrong
    right = attention_figures.class_figure(attentions, "AnnualCrop")
    assert [ax.get_xlabel() for ax in right.axes if ax.get_xlabel()] == ["right: AnnualCrop"]


def test_entropy_figure_is_in_nats_per_named_layer(tmp_path: Path):
    make_job(tmp_path, 0, ["finetune=last"], attention=0.5)
    make_job(tmp_path, 1, ["finetune=frozen"], attention=0.5)  # identical maps: named in the title
    attentions = attention_figures.load_attention(collect_jobs(tmp_path))
    fig = attention_figures.entropy_figure(attentions)
    ax = fig.axes[0]
    with np.load(tmp_path / "0" / "artifacts" / "attention.npz") as z:
        patches = z["cls_attention"][..., int(z["num_prefix_tokens"]) :].astype(np.float64)
        names = list(z["layer_names"])
    p = patches / patches.sum(-1, keepdims=True)
    expected = (-(p * np.log(p)).sum(-1)).mean(axis=(0, 2))  # nats, mean over heads and images
    line = ax.lines[0]
    assert np.allclose(line.get_ydata(), expected, atol=1e-5)
    assert [t.get_text() for t in ax.get_xticklabels()] == names  # module names, as in analysis.json
    assert "nats" in ax.get_ylabel() and "frozen = last" in ax.get_title()


def _analysis(entropy_early: float, entropy_late: float) -> dict:
    blocks = [f"blocks.{i}" for i in range(6)]
    return {
        "attention_distance": {b: {"end": [1.0 + i]} for i, b in enumerate(blocks)},
        "attention_entropy": {b: {"end": entropy_early if i < 2 else entropy_late} for i, b in enumerate(blocks)},
    }


@pytest.mark.parametrize(
    ("entropies", "verdict"),
    [
        ([(2.0, 1.0)] * 3, "not sharper (lower entropy) than late in any of the 3 jobs"),
        ([(1.0, 2.0)] * 3, "sharper (lower entropy) than late in all 3 jobs"),
        ([(1.0, 2.0), (2.0, 1.0), (2.0, 1.0)], "in 1 of 3 jobs (finetune=s0), not in the others"),
    ],
)
def test_sharper_early_is_worded_for_what_was_found(tmp_path: Path, entropies, verdict):
    for num in range(3):
        make_job(tmp_path, num, [f"finetune=s{num}"])
    jobs = collect_jobs(tmp_path)
    analyses = [(i, job, _analysis(*e)) for i, (job, e) in enumerate(zip(jobs, entropies))]
    (line,) = [line for line in observations(jobs, analyses) if line.startswith("Early vs late")]
    assert verdict in line and " 0 of " not in line


def test_captions_claim_std_over_seeds_only_with_seeds(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(writer, "_draw", lambda name, caption, *_: FigureEntry(name, caption, b""))  # captions only

    def caption(root: Path, seeds: int) -> str:
        for num in range(2 * seeds):
            make_job(root, num, [f"finetune={('last', 'full')[num % 2]}", f"seed={num // 2}"])
        (params,) = [e for e in writer._figures(collect_jobs(root), []) if e.name == "params_accuracy.png"]
        return params.caption

    assert "± std" not in caption(tmp_path / "one", 1)
    assert "(mean ± std over seeds)" in caption(tmp_path / "two", 2)
