"""Faults: kill-and-resume, signals, resumable sweeps, atomic outputs, divergence, safe checkpoint loading."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger

from gnr650.files import write_json
from gnr650.runs.checkpoints import CheckpointError
from gnr650.runs.history import HISTORY_NAME, read_history
from gnr650.runs.last_checkpoint import RunInterrupted
from gnr650.runs.resume import (
    ResumeError,
    checkpoint_to_resume,
    completed_results,
    run_dir,
    sweep_dir,
)
from gnr650.runs.run_state import RunState
from gnr650.train import train
from gnr650.training.divergence import DivergenceError
from tests.helpers import (
    RunsCodeWhenUnpickled,
    csv_rows,
    finish,
    kill_at_first,
    make_cfg,
    signal_at,
    train_py,
    write_image,
)

# Augmentation on: the resumed run must also restore the RNG, not only the weights and the batch order.
RUN = [
    "debug=smoke",
    "model=resnet18",
    "finetune=full",
    "dataset.augment=true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def read_results(directory: Path) -> dict:
    return json.loads((directory / "results.json").read_text())


def assert_same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-6, (k, a[k], b[k])


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(precision, tmp_path):
    args = RUN + [
        "trainer.max_epochs=3",
        "dataset.per_class=32",
        "last_ckpt_every_s=0",
        f"trainer.precision={precision}",
    ]
    reference = train_py(args, tmp_path / "reference")
    victim = train_py(args, tmp_path / "victim")
    runs = tmp_path / "victim" / "outputs" / "train" / "runs"
    kill_at_first(victim, runs, "*/checkpoints/last.ckpt")
    (run,) = runs.iterdir()
    assert not (run / "results.json").exists(), "killed too late: the run had finished"

    out = finish(train_py(args + ["resume=true"], tmp_path / "victim"))  # the same command plus resume=true
    assert list(runs.iterdir()) == [run], "resume must continue in the same run directory"
    resumed = read_results(run)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt"), out
    assert resumed["epochs"] == 3
    finish(reference)
    (ref_run,) = (tmp_path / "reference" / "outputs" / "train" / "runs").iterdir()
    assert_same_metrics(resumed["metrics"], read_results(ref_run)["metrics"])
    assert_same_history(run, ref_run)


SMALL = RUN + ["trainer.max_epochs=2", "logger=csv", "callbacks=default"]  # 4 steps an epoch


BF16 = ["trainer.precision=bf16-mixed"]  # autocast on the CPU: resume must be as exact as in float32


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(make_cfg(SMALL, out))
    return out


@pytest.fixture(scope="module")
def uninterrupted_bf16(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted_bf16")
    train(make_cfg(SMALL + BF16, out))
    return out


def assert_same_history(run: Path, reference: Path) -> None:
    """What happened after the interruption: every value logged in every epoch (metrics.csv: losses, accuracies,
    learning rate), the per-epoch history.csv drawn from them and the final weights (checkpoints/last.ckpt) are the
    uninterrupted run's."""
    assert (run / HISTORY_NAME).is_file() and (reference / HISTORY_NAME).is_file()  # not metrics.csv reduced
    history, ref_history = read_history(run), read_history(reference)
    assert [row["epoch"] for row in history] == list(range(1, len(ref_history) + 1)) and len(history) > 1
    assert [sorted(r) for r in history] == [sorted(r) for r in ref_history]
    for row, ref in zip(history, ref_history):
        assert row == pytest.approx(ref, abs=1e-6), row["epoch"]
    rows, ref_rows = csv_rows(run), csv_rows(reference)
    assert [sorted(r) for r in rows] == [sorted(r) for r in ref_rows]
    for row, ref in zip(rows, ref_rows):
        for key in ref:
            assert float(row[key]) == pytest.approx(float(ref[key]), abs=1e-6), (row["step"], key, row[key], ref[key])
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ref_weights = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights.keys() == ref_weights.keys()
    for key in ref_weights:
        assert torch.equal(weights[key], ref_weights[key]), key


@pytest.mark.parametrize(
    "signum,epoch,batch",
    [(signal.SIGTERM, 0, 1), (signal.SIGINT, 1, 2), (signal.SIGTERM, 0, 3)],
    ids=["sigterm-mid-epoch", "sigint-mid-epoch", "sigterm-last-batch"],
)
def test_signal_saves_a_checkpoint_and_resume_is_exact(signum, epoch, batch, uninterrupted, tmp_path):
    _signal_then_resume(SMALL, signum, epoch, batch, uninterrupted, tmp_path)


def test_resume_is_exact_under_bf16_autocast(uninterrupted_bf16, uninterrupted, tmp_path):
    _signal_then_resume(SMALL + BF16, signal.SIGTERM, 0, 3, uninterrupted_bf16, tmp_path)
    assert read_results(tmp_path)["precision"]["used"] == "bf16-mixed"
    # bf16 really ran: its losses are not float32's
    assert read_results(tmp_path)["metrics"]["train/loss"] != read_results(uninterrupted)["metrics"]["train/loss"]


def _signal_then_resume(run: list[str], signum, epoch: int, batch: int, uninterrupted: Path, tmp_path: Path) -> None:
    args = run + signal_at(epoch, batch, signum)
    handler = signal.getsignal(signum)
    with pytest.raises(RunInterrupted, match="resume=true"):
        train(make_cfg(args, tmp_path))
    assert signal.getsignal(signum) is handler  # put back
    assert read_results(tmp_path)["error"].startswith("RunInterrupted: Stopped by")
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 * epoch + batch + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(make_cfg(args + ["resume=true"], tmp_path))
    # The run's own checkpoints in its folder are no news to the user resuming it.
    assert not [w.message for w in caught if str(w.message).startswith("Checkpoint directory")]
    assert resumed["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert_same_metrics(resumed["metrics"], read_results(uninterrupted)["metrics"])
    # metrics.csv keeps the rows logged before the interruption, gains no duplicates, and the interrupted
    # epoch's training loss and accuracy cover all its batches, those before the signal included.
    assert_same_history(tmp_path, uninterrupted)


class CSVLoggerKilledBeforeEpochRow(CSVLogger):
    """Dies like a SIGKILL (``os._exit``) when epoch ``epoch``'s training row arrives, the first time only
    (``marker``): after that epoch's end-of-epoch checkpoint was written, before the row reaches metrics.csv."""

    def __init__(self, *args, epoch: int, marker: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch, self.marker = epoch, Path(marker)

    def log_metrics(self, metrics, step=None):
        if "train/loss" in metrics and int(metrics.get("epoch", -1)) == self.epoch and not self.marker.exists():
            self.marker.touch()
            os._exit(9)
        super().log_metrics(metrics, step)


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_killed_between_the_epoch_checkpoint_and_its_metrics_row_resumes_with_the_whole_history(tmp_path):
    args = RUN + ["trainer.max_epochs=3", "dataset.per_class=32", "last_ckpt_every_s=0"]
    dying = [
        f"logger.csv._target_={__name__}.CSVLoggerKilledBeforeEpochRow",
        "+logger.csv.epoch=1",
        f"+logger.csv.marker={tmp_path / 'died'}",
    ]
    reference = train_py(args, tmp_path / "reference")
    victim = train_py(args + dying, tmp_path / "victim")
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == 9 and (tmp_path / "died").exists(), out[-3000:]
    (run,) = (tmp_path / "victim" / "outputs" / "train" / "runs").iterdir()
    assert not (run / "results.json").exists()

    finish(train_py(args + dying + ["resume=true"], tmp_path / "victim"))
    resumed = read_results(run)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    finish(reference)
    (ref_run,) = (tmp_path / "reference" / "outputs" / "train" / "runs").iterdir()
    assert_same_metrics(resumed["metrics"], read_results(ref_run)["metrics"])
    assert_same_history(run, ref_run)


class LastCheckpointProbe(pl.Callback):
    """Records the global step stored in ``path`` (None while absent) at each epoch's first batch and after
    training (the epoch-end checkpoint becomes ``last.ckpt`` in the run's own hooks at the epoch boundary)."""

    latest: LastCheckpointProbe | None = None  # the instance train() built

    def __init__(self, path: str):
        self.path, self.seen = Path(path), []
        LastCheckpointProbe.latest = self

    def _look(self) -> None:
        self.seen.append(torch.load(self.path, weights_only=True)["global_step"] if self.path.exists() else None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self._look()

    def on_fit_end(self, trainer, pl_module):
        self._look()


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
@pytest.mark.parametrize("every_s,seen", [(0, [None, 4, 8, 12]), (3600, [None, None, None, 12])])
def test_last_checkpoint_is_written_at_the_interval_and_after_the_final_epoch(every_s, seen, tmp_path):
    """A run that cannot make its interval still ends with a resumable last.ckpt (and writes no other). A
    pending epoch-end save that a killed run left behind is never published as last.ckpt."""
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 99}, tmp_path / "checkpoints" / ".last.ckpt.pending")
    train(
        make_cfg(
            SMALL
            + [
                "trainer.max_epochs=3",
                f"last_ckpt_every_s={every_s}",
                f"+callbacks.probe._target_={__name__}.LastCheckpointProbe",
                f"+callbacks.probe.path={tmp_path / 'checkpoints' / 'last.ckpt'}",
            ],
            tmp_path,
        )
    )
    assert LastCheckpointProbe.latest.seen == seen
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["optimizer_states"] and checkpoint["loops"]  # a full, resumable checkpoint


def test_resume_true_picks_the_newest_run_with_the_same_overrides(tmp_path):
    runs = tmp_path / "runs"
    for name, overrides in (
        ("a", ["model=resnet18", "seed=1"]),
        ("b", ["seed=1", "model=resnet18", "resume=true"]),
        ("c", ["model=resnet18", "seed=2"]),
    ):
        (runs / name / ".hydra").mkdir(parents=True)
        (runs / name / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
        time.sleep(0.01)
    default = str(runs / "new")
    assert run_dir(True, ["model=resnet18", "seed=1", "resume=true", "hydra.run.dir=x"], default) == str(runs / "b")
    assert run_dir(True, ["model=resnet18", "seed=3", "resume=true"], default) == default  # nothing to resume
    assert run_dir(False, ["model=resnet18", "seed=1"], default) == default
    assert run_dir(str(runs / "c"), [], default) == str(runs / "c")
    with pytest.raises(ResumeError, match="no such run directory"):
        run_dir(str(runs / "missing"), [], default)
    (runs / "c" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ResumeError, match="ckpt_path"):
        run_dir(str(runs / "c" / "last.ckpt"), [], default)


def test_skip_done_reuses_the_newest_sweep_with_the_same_overrides(tmp_path):
    sweeps = tmp_path / "multiruns"
    (sweeps / "old").mkdir(parents=True)
    (sweeps / "old" / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {"task": ["seed=0,1"]}}}))
    default = str(sweeps / "new")
    assert sweep_dir(True, ["seed=0,1", "skip_done=true"], default) == str(sweeps / "old")
    assert sweep_dir(True, ["seed=0,1,2", "skip_done=true"], default) == default
    assert sweep_dir(False, ["seed=0,1"], default) == default


def test_a_checkpoint_of_other_overrides_is_refused_unless_given_as_ckpt_path():
    state = RunState(["seed=0"]).state_dict()
    with pytest.raises(ResumeError, match=r"other overrides; this run has seed=1 \(was seed=0\).*ckpt_path"):
        RunState(["seed=1"]).load_state_dict(state)
    RunState(["seed=1"], check_overrides=False).load_state_dict(state)  # ckpt_path=<file>: the user's choice
    RunState(["seed=0", "resume=true", "hydra.run.dir=x"]).load_state_dict(state)


def test_resume_without_a_checkpoint_starts_afresh_and_drops_torn_writes(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    torn = directory / ".last.ckpt.abc123.tmp"
    torn.write_bytes(b"half a checkpoint")
    assert checkpoint_to_resume(directory, None, True, False) == (None, True)
    assert not torn.exists()
    (directory / "last.ckpt").write_bytes(b"")
    assert checkpoint_to_resume(directory, None, True, False) == (str(directory / "last.ckpt"), True)
    assert checkpoint_to_resume(directory, None, False, True) == (str(directory / "last.ckpt"), True)  # skip_done
    assert checkpoint_to_resume(directory, None, False, False) == (None, True)  # a fresh run ignores it
    assert checkpoint_to_resume(directory, "/x.ckpt", True, False) == ("/x.ckpt", False)


def test_completed_results_only_for_a_completed_job_with_the_same_overrides(tmp_path):
    assert completed_results(tmp_path, ["seed=0"]) is None  # partial: killed before results.json
    for status, overrides, expected in (
        ("failed", ["seed=0"], False),
        ("running", ["seed=0"], False),
        ("completed", ["seed=1"], False),
        ("completed", ["seed=0"], True),
    ):
        (tmp_path / "results.json").write_text(
            json.dumps({"status": status, "overrides": overrides, "metrics": {"val/acc": 0.5}})
        )
        assert (completed_results(tmp_path, ["seed=0", "skip_done=true"]) is not None) == expected
    (tmp_path / "results.json").write_text('{"status": "compl')  # torn (never happens with atomic writes)
    assert completed_results(tmp_path, ["seed=0"]) is None


def make_image_folder(root: Path, classes=("a", "b", "c"), n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(n):
            write_image(root / c / f"{i}.png", rng)


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_sweep_with_a_failed_job_is_completed_by_rerunning_with_skip_done(tmp_path):
    good1, good2, late = tmp_path / "data1", tmp_path / "data2", tmp_path / "data3"
    make_image_folder(good1)
    make_image_folder(good2)
    args = [
        "-m",
        "dataset=imagefolder",
        f"dataset.root={good1},{good2},{late}",
        "model=resnet18",
        "model.img_size=32",
        "trainer.max_epochs=1",
        "batch_size=8",
        "eval_batch_size=64",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=true",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    console = finish(train_py(args, tmp_path / "sweep"))
    (sweep,) = (tmp_path / "sweep" / "outputs" / "train" / "multiruns").iterdir()
    first = {n: read_results(sweep / str(n)) for n in range(3)}
    assert [first[n]["status"] for n in range(3)] == ["completed", "completed", "failed"]
    # A quiet console: no advertising, no untrue "will be deleted", one progress line per epoch, a line per job.
    assert "Tip:" not in console and "will be deleted" not in console and "weights_only` was not set" not in console
    assert "TPU available" not in console and "Total params" not in console  # no accelerator roll-call, no table
    assert sum(line.startswith("Epoch 1/1 ") for line in console.splitlines()) == 2  # the bar, counted from 1
    assert sum("[INFO] - Epoch 1/1: train loss " in line for line in console.splitlines()) == 2  # the epoch line
    for n in (0, 1):
        m = first[n]["metrics"]
        accuracies = f"train {m['train/acc']:.2%}, val {m['val/acc']:.2%}, test {m['test/acc']:.2%}"
        assert console.count(f"Job {n} (dataset.root={(good1, good2)[n]}) completed: {accuracies}") == 1
    assert console.count(f"Job 2 (dataset.root={late}) failed") == 1

    make_image_folder(late)  # the cause of the failure is fixed
    out = finish(train_py(args + ["skip_done=true"], tmp_path / "sweep"))
    assert list((tmp_path / "sweep" / "outputs" / "train" / "multiruns").iterdir()) == [sweep], "same sweep dir"
    assert out.count("already completed; not training it again") == 2
    second = {n: read_results(sweep / str(n)) for n in range(3)}
    assert [second[n]["status"] for n in range(3)] == ["completed"] * 3
    assert all(second[n]["timing"] == first[n]["timing"] for n in (0, 1)), "completed jobs must not run again"
    summary = json.loads((sweep / "summary.json").read_text())
    assert [job["status"] for job in summary["jobs"]] == ["completed"] * 3


def test_checkpoint_write_killed_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    io = instantiate(make_cfg(SMALL, tmp_path).trainer, logger=False).strategy.checkpoint_io  # as configured
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def torn_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint") if isinstance(f, (str, Path)) else f.write(b"PK half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"global_step": 1}


def test_results_json_write_killed_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    write_json(tmp_path / "results.json", {"status": "completed"})

    def torn_dump(data, f, **kwargs):
        f.write('{"status": "runn')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", torn_dump)
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "results.json", {"status": "running"})
    monkeypatch.undo()
    assert read_results(tmp_path) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert (tmp_path / "results.json").stat().st_mode & 0o044  # readable by others, like any output


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCodeWhenUnpickled()}, evil)
    with pytest.raises(CheckpointError, match=r"Refusing to load checkpoint .*evil.ckpt.*GLOBAL posix.system"):
        train(make_cfg(SMALL + [f"ckpt_path={evil}"], tmp_path / "out"))
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(evil.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        train(make_cfg(SMALL + [f"ckpt_path={torn}"], tmp_path / "out"))
    assert read_results(tmp_path / "out")["error"].startswith("CheckpointError: Cannot read checkpoint")


def test_training_from_the_weights_only_best_checkpoint_is_refused_naming_last_ckpt(uninterrupted, tmp_path):
    (best,) = (uninterrupted / "checkpoints").glob("epoch*.ckpt")
    assert "optimizer_states" not in torch.load(best, weights_only=True)  # the best is saved weights only
    with pytest.raises(CheckpointError, match=r"holds weights only.*resume=true.*checkpoints/last.ckpt"):
        train(make_cfg(SMALL + [f"ckpt_path={best}"], tmp_path))


class PoisonAt(pl.Callback):
    """Makes the loss NaN from training batch ``batch`` of ``epoch`` on."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            with torch.no_grad():
                pl_module.net.fc.weight.fill_(float("nan"))


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
@pytest.mark.parametrize("callbacks", ["default", "none"])
def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(callbacks, tmp_path):
    args = SMALL + [
        f"callbacks={callbacks}",
        "trainer.max_epochs=3",
        "last_ckpt_every_s=0",
        f"+callbacks.poison._target_={__name__}.PoisonAt",
        "+callbacks.poison.epoch=1",
        "+callbacks.poison.batch=2",
    ]
    with pytest.raises(DivergenceError) as err:
        train(make_cfg(args, tmp_path))
    message = str(err.value)
    assert "loss was nan at global step 6 (epoch 1)" in message
    assert str(tmp_path / "checkpoints" / "last.ckpt") in message
    assert read_results(tmp_path)["error"].startswith("DivergenceError: Training diverged")
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # the end of epoch 0, before the divergence
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
