"""Multirun summary: built against synthetic job directories that follow the run-directory contract."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gnr650.interpret.index import ArtifactKind, append_to_index, artifacts_dir, entry
from gnr650.runs.history import HISTORY_NAME
from gnr650.summary import collect_jobs, write_summary
from gnr650.summary.attention import load_attention
from gnr650.summary.cli import main as cli_main
from gnr650.summary.collect import read_curves, read_kernel_norms
from gnr650.summary.figures import curves_figure, job_style
from gnr650.summary.hydra_callback import job_line
from tests.summary.jobs import REPO, attention_arrays, make_job

ARTEFACT_FIGURES = {"kernel_norms.png", "attention_entropy.png", "attention_AnnualCrop.png", "attention_Forest.png"}


def test_two_by_two_writes_every_summary_file(two_by_two: Path):
    summary = write_summary(two_by_two)
    names = {p.name for p in summary.files}
    expected = {
        "summary.md",
        "summary.csv",
        "summary.json",
        "accuracy.png",
        "curves.png",
        "report.html",
        "attention_entropy.png",
        "attention_AnnualCrop.png",
        "attention_Forest.png",
    }
    assert expected <= names
    for name in expected:
        assert (two_by_two / name).stat().st_size > 0
    assert not list(two_by_two.glob(".*.tmp"))
    assert "kernel_norms.png" not in names  # no conv-net job


def test_table_numbers_equal_results(two_by_two: Path):
    write_summary(two_by_two)
    rows = {r["label"]: r for r in json.loads((two_by_two / "summary.json").read_text())["jobs"]}
    assert list(rows) == [
        "model=vit_ti16, finetune=last",
        "model=vit_ti16, finetune=full",
        "model=vit_s16, finetune=last",
        "model=vit_s16, finetune=full",
    ]
    with (two_by_two / "summary.csv").open() as f:
        csv_rows = {r["label"]: r for r in csv.DictReader(f)}
    md = (two_by_two / "summary.md").read_text()
    assert "| Job | Train Accuracy | Validation Accuracy | Test Accuracy |" in md
    for job in sorted(two_by_two.glob("[0-9]")):
        results = json.loads((job / "results.json").read_text())
        label = f"model={results['overrides'][1].split('=')[1]}, finetune={results['overrides'][2].split('=')[1]}"
        for metric in ("train/acc", "val/acc", "test/acc"):
            expected = results["metrics"].get(metric)
            assert rows[label][metric] == expected
            assert (float(csv_rows[label][metric]) if csv_rows[label][metric] else None) == expected
        assert rows[label]["trainable_params"] == results["params"]["trainable"]
        assert rows[label]["fit_s"] == results["timing"]["fit_s"]
        if results["status"] == "completed":
            md_row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
            cells = [c.strip() for c in md_row.strip("|").split("|")]
            assert cells[1:4] == [f"{100 * results['metrics'][m]:.2f}%" for m in ("train/acc", "val/acc", "test/acc")]
            assert cells[5].startswith(f"{results['params']['trainable']:,}")  # after the test interval


def test_failed_and_unfinished_jobs_are_rows(two_by_two: Path):
    make_job(two_by_two, 4, ["experiment=eurosat-vit", "model=vit_b16", "finetune=last"], status=None)
    summary = write_summary(two_by_two)
    assert [j.status for j in summary.jobs] == ["completed"] * 3 + ["failed", "unfinished"]
    md = (two_by_two / "summary.md").read_text()
    failed_row = next(line for line in md.splitlines() if "vit_s16, finetune=full" in line)
    assert "failed: RuntimeError: CUDA out of memory |" in failed_row  # first line of the error only
    assert "Traceback" not in md
    assert re.search(r"\| model=vit_b16, finetune=last \|.*unfinished: no results\.json", md)
    html = (two_by_two / "report.html").read_text()
    assert html.count('<tr class="failed">') == 2


def test_a_job_that_did_not_learn_is_marked_with_its_warning(tmp_path: Path):
    warning = "Did not learn: final train accuracy 10.00% is within 5 points of chance (10.00%, 10 classes)."
    make_job(tmp_path, 0, ["optimizer.lr_head=0.001"])
    make_job(tmp_path, 1, ["optimizer.lr_head=10"], acc=(0.1, 0.1, 0.1), warnings=[warning])
    summary = write_summary(tmp_path)
    assert [job.warnings for job in summary.jobs] == [[], [warning]]
    md = (tmp_path / "summary.md").read_text()
    assert "| optimizer.lr_head=10 | 10.00% | 10.00% | 10.00% |" in md
    assert next(line for line in md.splitlines() if "| optimizer.lr_head=10 |" in line).endswith(
        f"| completed, warning: {warning} | [1/](1/) |"
    )
    assert next(line for line in md.splitlines() if "| optimizer.lr_head=0.001 |" in line).endswith(
        "| completed | [0/](0/) |"
    )
    assert "1 completed with a warning (Status column): optimizer.lr_head=10." in md
    with (tmp_path / "summary.csv").open() as f:
        assert [row["warnings"] for row in csv.DictReader(f)] == ["", warning]
    assert [job["warnings"] for job in json.loads((tmp_path / "summary.json").read_text())["jobs"]] == [None, warning]
    html = (tmp_path / "report.html").read_text()
    (row,) = re.findall(r'<tr class="warned">.*?</tr>', html)
    assert "optimizer.lr_head=10<" in row and f"completed, warning: {warning}" in row
    assert html.count("<tr>") == 2  # the header and the job that learned, unmarked
    assert (
        job_line(summary.jobs[1])
        == f"Job 1 (optimizer.lr_head=10) completed: train 10.00%, val 10.00%, test 10.00%; warning: {warning}"
    )


def test_labels_come_from_any_swept_override(tmp_path: Path):
    for num, per_class in enumerate([10, 100, 500]):
        make_job(
            tmp_path, num, ["experiment=cifar-resnet", f"dataset.per_class={per_class}", "seed=0"], kernel_norms=True
        )
    jobs = collect_jobs(tmp_path)
    assert [j.label for j in jobs] == ["dataset.per_class=10", "dataset.per_class=100", "dataset.per_class=500"]
    summary = write_summary(tmp_path)
    assert "kernel_norms.png" in {p.name for p in summary.files}
    assert json.loads((tmp_path / "summary.json").read_text())["seed_aggregate"] is None


def test_artefacts_are_read_where_the_index_points(tmp_path: Path):
    for num, sharpness in enumerate([0.5, 1.5]):
        make_job(
            tmp_path,
            num,
            [f"finetune={['last', 'full'][num]}"],
            attention=sharpness,
            kernel_norms=True,
            attention_path="exported/end/arrays.npz",
            kernel_norms_path="norms/conv.csv",
        )
    summary = write_summary(tmp_path)
    assert ARTEFACT_FIGURES.issubset(p.name for p in summary.files)
    jobs = collect_jobs(tmp_path)
    for job, sharpness in zip(jobs, [0.5, 1.5]):
        [loaded] = [a for a in load_attention(jobs) if a.job is job]
        written = attention_arrays(sharpness)
        np.testing.assert_allclose(loaded.rollout, written["rollout"])
        head_mean = written["cls_attention"][..., 1:].mean(axis=2)  # drop the CLS token, average the heads
        np.testing.assert_allclose(loaded.maps, head_mean.reshape(*head_mean.shape[:2], 4, 4), rtol=1e-6)
        scale = 1 + job.num / 10  # make_job's end norms: scale x (layer index + 1)
        assert [row["mean"] for row in read_kernel_norms(job)["end"]] == pytest.approx([scale, 2 * scale, 3 * scale])


def test_attention_figures_use_the_end_phase_only(tmp_path: Path):
    def export_epoch_phase(job: Path, path: str) -> None:
        """What the attention export writes every N epochs: arrays of another phase, not to be shown."""
        np.savez(artifacts_dir(job) / path, **attention_arrays(0.2, seed=7))
        append_to_index(artifacts_dir(job), [entry(ArtifactKind.ATTENTION_NPZ, path, phase="epoch2", epoch=2)])

    ended = make_job(tmp_path, 0, ["finetune=full"], attention=1.0, attention_path="best_weights.npz")
    export_epoch_phase(ended, "attention.npz")
    interrupted = make_job(tmp_path, 1, ["finetune=last"], kernel_norms=True)
    export_epoch_phase(interrupted, "attention_epoch2.npz")
    [loaded] = load_attention(collect_jobs(tmp_path))
    assert loaded.job.dir == ended
    np.testing.assert_allclose(loaded.rollout, attention_arrays(1.0)["rollout"])


def test_jobs_without_an_index_have_no_artefact_figures(tmp_path: Path, caplog):
    make_job(tmp_path, 0, ["finetune=full"], attention=1.0, kernel_norms=True, index=False)
    make_job(tmp_path, 1, ["finetune=last"], attention=1.0, kernel_norms=True)
    (artifacts_dir(tmp_path / "1") / "index.json").write_text("not json")
    with caplog.at_level(logging.DEBUG, logger="gnr650.interpret.index"):
        summary = write_summary(tmp_path)
    names = {p.name for p in summary.files}
    assert {"summary.md", "accuracy.png", "curves.png", "report.html"} <= names
    assert not names & ARTEFACT_FIGURES
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert any(level == "DEBUG" and "No index.json" in text and "/0/" in text for level, text in messages)
    assert any(level == "WARNING" and "Unreadable index.json" in text and "/1/" in text for level, text in messages)


def test_seed_sweep_is_aggregated(tmp_path: Path):
    accs = {("last", 0): 0.80, ("last", 1): 0.82, ("last", 2): 0.84, ("full", 0): 0.90, ("full", 1): 0.92}
    for num, ((finetune, seed), acc) in enumerate(accs.items()):
        make_job(tmp_path, num, [f"finetune={finetune}", f"seed={seed}"], acc=(acc, acc, acc))
    make_job(tmp_path, 5, ["finetune=full", "seed=2"], status="failed", error="ValueError: boom")
    write_summary(tmp_path)
    seeds = {r["label"]: r for r in json.loads((tmp_path / "summary.json").read_text())["seed_aggregate"]}
    assert seeds["finetune=last"]["val/acc_mean"] == pytest.approx(0.82)
    assert seeds["finetune=last"]["val/acc_std"] == pytest.approx(0.02)
    assert (seeds["finetune=full"]["completed"], seeds["finetune=full"]["jobs"]) == (2, 3)
    md = (tmp_path / "summary.md").read_text()
    assert "## Mean ± std over seeds" in md
    assert "| finetune=last | 3/3 | 82.00 ± 2.00% |" in md


def test_curves_group_lightning_rows_by_epoch(tmp_path: Path):
    make_job(tmp_path, 0, ["finetune=full"], acc=(0.9, 0.6, 0.5), epochs=3)
    curves = read_curves(collect_jobs(tmp_path)[0])  # a job without history.csv: its metrics.csv, reduced
    assert curves["val/acc"] == pytest.approx({1: 0.2, 2: 0.4, 3: 0.6})  # completed epochs, counted from 1
    assert curves["train/loss_epoch"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert curves["train/loss_step"] == pytest.approx({1: 2.5, 2: 2.5, 3: 2.5})


def test_curves_figure_draws_train_and_val_accuracy_and_loss_of_every_job(tmp_path: Path):
    make_job(tmp_path, 0, ["finetune=full"], acc=(0.9, 0.6, 0.5), epochs=3)  # metrics.csv only (older jobs)
    make_job(tmp_path, 1, ["finetune=last"], epochs=0)
    history = [
        {"epoch": e, "step": 4 * e, "train/acc": t, "train/loss": 2 / e, "val/acc": v, "val/loss": 1 + e / 10}
        for e, t, v in ((1, 0.5, 0.45), (2, 0.75, 0.55))
    ]
    with (tmp_path / "1" / HISTORY_NAME).open("w", newline="") as f:
        writer = csv.DictWriter(f, list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    fig = curves_figure(collect_jobs(tmp_path))
    panels = dict(zip(["train/acc", "val/acc", "train/loss", "val/loss"], fig.axes))  # rows: acc, loss

    def drawn(panel: str, job: int) -> list[float]:
        (line,) = [ln for ln in panels[panel].lines if ln.get_color() == job_style(job).color]
        assert (line.get_linestyle(), line.get_marker()) == (job_style(job).linestyle, job_style(job).marker)
        return list(line.get_ydata())

    for name in panels:
        scale = 100 if name.endswith("acc") else 1
        assert drawn(name, 1) == pytest.approx([scale * row[name] for row in history])
    assert drawn("train/acc", 0) == pytest.approx([90, 90, 90])  # the fake metrics.csv's train accuracy
    assert drawn("val/acc", 0) == pytest.approx([20, 40, 60])
    assert drawn("train/loss", 0) == pytest.approx([1, 1 / 2, 1 / 3])  # train/loss_epoch
    assert drawn("val/loss", 0) == pytest.approx([0.5, 0.5, 0.5])


def test_frozen_job_without_epochs_and_optuna_labels(tmp_path: Path):
    make_job(tmp_path, 0, ["finetune=frozen", "optimizer.lr_head=0.0012345678"], epochs=0)
    make_job(tmp_path, 1, ["finetune=frozen", "optimizer.lr_head=3.0e-05"])
    jobs = collect_jobs(tmp_path)
    assert [j.label for j in jobs] == ["optimizer.lr_head=0.001235", "optimizer.lr_head=3e-05"]
    summary = write_summary(tmp_path)
    assert "curves.png" in {p.name for p in summary.files}


def test_empty_directory_and_cli(tmp_path: Path, two_by_two: Path, capsys):
    assert cli_main([str(two_by_two)]) == 0
    assert "model=vit_s16, finetune=full" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main([str(empty)]) == 1
    assert (empty / "summary.md").read_text().startswith("# No jobs found\n")


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_script_runs(two_by_two: Path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), str(two_by_two)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "report.html" in out


TOY_APP = """
import json, os, sys
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    out = HydraConfig.get().runtime.output_dir
    def write(status, error=None):
        results = {"status": status, "error": error, "overrides": list(HydraConfig.get().overrides.task),
                   "metrics": {"train/acc": 0.9, "val/acc": 0.8 if cfg.finetune == "full" else 0.7,
                               "test/acc": 0.75} if status == "completed" else {},
                   "params": {"total": 10, "trainable": 5}, "timing": {"fit_s": 1.0, "total_s": 1.5}}
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f)
    try:
        if cfg.model == cfg.fail_model and cfg.finetune == "full":
            raise RuntimeError("boom on purpose")
        write("completed")
        return 0.8
    except Exception as exc:
        write("failed", f"{type(exc).__name__}: {exc}")
        if cfg.reraise or HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        return None  # not NaN: hydra-optuna-sweeper 1.3 crashes on a NaN objective

if __name__ == "__main__":
    main()
"""


CONFIG = """
model: a
finetune: last
fail_model: b
reraise: false
hydra:
  sweep:  # interpolations the callback resolves again after the jobs ran
    dir: ${hydra.runtime.cwd}/multiruns/${now:%Y-%m-%d_%H-%M-%S}
    subdir: ${hydra.job.num}
  callbacks:
    summary:
      _target_: gnr650.summary.SummaryCallback
"""


def run_toy_sweep(tmp_path: Path, reraise: bool) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "app.py").write_text(TOY_APP)
    (tmp_path / "config.yaml").write_text(CONFIG)
    cmd = [sys.executable, "app.py", "-m", "model=a,b", "finetune=last,full", f"reraise={reraise}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    return proc, sweep_dir


def test_hydra_callback_summarises_a_sweep_with_a_failed_job(tmp_path: Path):
    proc, sweep_dir = run_toy_sweep(tmp_path, reraise=False)
    assert proc.returncode == 0, proc.stderr
    md = (sweep_dir / "summary.md").read_text()
    assert md.count("| model=") == 4
    assert "| model=b, finetune=full |" in md and "failed: RuntimeError: boom on purpose" in md
    assert (sweep_dir / "report.html").is_file()
    # The summary step is announced before it starts and timed when done.
    console = proc.stdout + proc.stderr
    announced = console.index(f"Writing the summary of 4 jobs to {sweep_dir} ...")
    done = re.search(rf"Summary of 4 jobs written in (\d+\.\d) s: {re.escape(str(sweep_dir / 'report.html'))}", console)
    assert done and announced < done.start()


def test_hydra_skips_on_multirun_end_when_a_job_raises(tmp_path: Path):
    """Why train.py must not re-raise in multirun mode: Hydra then aborts before on_multirun_end."""
    proc, sweep_dir = run_toy_sweep(tmp_path, reraise=True)
    assert proc.returncode != 0
    assert "boom on purpose" in proc.stderr
    assert len(list(sweep_dir.glob("*/results.json"))) == 4  # the batch still ran every job
    assert not (sweep_dir / "summary.md").exists()
    assert cli_main([str(sweep_dir)]) == 0  # the on-demand summary recovers
    assert "failed: RuntimeError: boom on purpose" in (sweep_dir / "summary.md").read_text()


def test_hparams_search_preset_is_valid_yaml():
    preset = yaml.safe_load((REPO / "configs" / "hparams_search" / "lr.yaml").read_text())
    assert {"override /hydra/sweeper": "optuna"} in preset["defaults"]
    assert set(preset["hydra"]["sweeper"]["params"]) == {"optimizer.lr_head", "optimizer.lr_backbone"}
    assert preset["hydra"]["sweeper"]["direction"] == "maximize"
    assert preset["optimized_metric"] == "val/acc"


def test_hparams_search_preset_composes_with_optuna():
    """Runs where the `optuna` extra is installed; needs `- hparams_search: null` in train.yaml's defaults."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=lr", "finetune=top4"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/acc"
    assert "optimizer.lr_head" in cfg.hydra.sweeper.params and "lr_backbone" in cfg.optimizer
