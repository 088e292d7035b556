"""What the user sees when a run cannot go on: an expected error is one message and exit status 2, an interrupted
run one line with the command that continues it, and a failed attempt leaves no run directory behind."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import gnr650.train
from gnr650.data.folders import DataNotFoundError
from gnr650.errors import reporting_user_errors
from gnr650.models import WeightsError, build_vit
from gnr650.runs.resume import continue_command
from gnr650.runs.run_dirs import removed_when_unused
from gnr650.train import hydra_task
from tests.helpers import ROOT, make_cfg, signal_at, train_py

SMOKE = ["debug=smoke", "model=resnet18", "logger=none", "callbacks=none"]  # 4 steps an epoch, 2 epochs
HYDRA_FILES = {".hydra", "train.log"}


@pytest.fixture
def hydra_run_dir():
    """Makes a run directory as Hydra leaves it when the task starts: its config folder, and its log open in the
    root logger's file handler."""
    handlers = []

    def make(path: Path) -> Path:
        (path / ".hydra").mkdir(parents=True)
        (path / ".hydra" / "overrides.yaml").write_text("[]\n")
        handlers.append(logging.FileHandler(path / "train.log"))
        logging.getLogger().addHandler(handlers[-1])
        return path

    yield make
    for handler in handlers:
        logging.getLogger().removeHandler(handler)
        handler.close()


def missing_data(tmp_path: Path) -> list[str]:
    return SMOKE + ["dataset=imagefolder", f"dataset.root={tmp_path / 'no-such-folder'}"]


def test_user_error_is_its_message_alone_and_leaves_no_run_dir_unless_hydra_full_error(
    hydra_run_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = hydra_run_dir(tmp_path / "runs" / "now")
    cfg = make_cfg(missing_data(tmp_path), run)
    with pytest.raises(SystemExit) as stopped:
        hydra_task(cfg)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and str(tmp_path / "no-such-folder") in err, err
    assert err.count("error:") == 1 and "Traceback" not in err and "DataNotFoundError" not in err
    assert not run.exists() and (tmp_path / "runs").is_dir()  # the attempt's directory, not its parent

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the error as it is, for Hydra to print with its traceback
    with pytest.raises(DataNotFoundError):
        hydra_task(make_cfg(missing_data(tmp_path), hydra_run_dir(tmp_path / "runs" / "later")))


def test_a_user_error_while_hydra_resolves_the_run_dir_is_its_message_alone(tmp_path, capsys, monkeypatch):
    """``resume=<missing dir>`` fails in Hydra, before the task: reported there, not with Hydra's traceback."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cfg = OmegaConf.create({"dir": f"${{gnr650.run_dir:'{tmp_path / 'missing'}',[],'default'}}"})
    with pytest.raises(SystemExit) as stopped:
        cfg.dir  # noqa: B018 (resolves it)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"train.py: error: resume={tmp_path / 'missing'}: no such run directory.\n"


def test_a_wrapped_user_error_is_its_message_alone_and_a_bug_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cause = WeightsError("No weights here. Set GNR650_WEIGHTS_DIR.")
    with pytest.raises(SystemExit) as stopped, reporting_user_errors("prog"):
        raise InstantiationException("Error in call to target 'x':\nWeightsError(...)") from cause
    assert stopped.value.code == 2 and capsys.readouterr().err == f"prog: error: {cause}\n"
    with pytest.raises(RuntimeError, match="a bug"), reporting_user_errors("prog"):
        raise RuntimeError("a bug")


@pytest.mark.parametrize(
    "before,during,kept",
    [
        ((), (), False),  # failed before writing anything: removed
        (("checkpoints",), (), True),  # a resumed run's directory
        ((), ("checkpoints",), True),  # failed after training wrote something
    ],
)
def test_only_a_directory_the_failed_run_left_unused_is_removed(hydra_run_dir, before, during, kept, tmp_path):
    run = hydra_run_dir(tmp_path / "run")
    for name in before:
        (run / name).mkdir()
    with pytest.raises(DataNotFoundError), removed_when_unused(run, HYDRA_FILES):
        (run / "results.json").write_text("{}")
        for name in during:
            (run / name).mkdir()
        raise DataNotFoundError("no data")
    assert run.exists() == kept
    with pytest.raises(ValueError), removed_when_unused(run := hydra_run_dir(tmp_path / "bug"), HYDRA_FILES):
        raise ValueError("a bug: not a UserError")
    assert run.exists()


def test_missing_weights_fail_at_once_with_a_short_message_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """No local file and no hub: the hub client runs in offline mode (its local cache or an immediate error),
    not through a minute of retries, and the message says what to set."""
    from huggingface_hub import constants
    from timm.models import _hub

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    offline_at_download = []

    def hub_download(*args, **kwargs):
        offline_at_download.append(constants.is_offline_mode())
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("not in the local cache " + "and a long explanation " * 20)

    monkeypatch.setattr(_hub, "hf_hub_download", hub_download)
    with pytest.raises(WeightsError) as error:
        build_vit(3, arch="vit_tiny_patch16_224", img_size=32, pretrained=True, weights_dir=str(tmp_path))
    assert offline_at_download and all(offline_at_download)
    message = str(error.value)
    assert len(message) < 350 and "long explanation" not in message, message
    for hint in (str(tmp_path), "GNR650_WEIGHTS_DIR=", "model.weights=", "model.pretrained=false"):
        assert hint in message
    assert constants.HF_HUB_OFFLINE is False  # offline mode only for that call


def test_continue_command_is_the_same_command_plus_resume_or_skip_done(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/no/such/python")  # not what PATH finds: its full path
    argv = ["train.py", "model.weights=/a b/w.pt", "resume=false"]
    assert continue_command(argv, multirun=False) == "/no/such/python train.py 'model.weights=/a b/w.pt' resume=true"
    assert continue_command(["train.py", "-m", "seed=0,1"], multirun=True) == (
        "/no/such/python train.py -m seed=0,1 skip_done=true"
    )
    named = ["train.py", "resume=/runs/a"]  # already names the run it continues
    assert continue_command(named, multirun=False) == "/no/such/python train.py resume=/runs/a"


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_with_one_line_naming_the_checkpoint_and_the_command(
    hydra_run_dir, signum, status, tmp_path, capsys, monkeypatch
):
    args = SMOKE + signal_at(0, 1, signum)
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    run = hydra_run_dir(tmp_path / "run")
    with pytest.raises(SystemExit) as stopped:
        hydra_task(make_cfg(args, run))
    assert stopped.value.code == status
    lines = capsys.readouterr().err.splitlines()
    last = run / "checkpoints" / "last.ckpt"
    command = continue_command(["train.py", *args], multirun=False)
    assert lines == [
        f"Stopped by {signal.Signals(signum).name}; saved {last} (step 2, epoch 0). Continue with: {command}"
    ]
    assert command.endswith(" resume=true") and last.is_file()


def test_an_interrupted_sweep_job_says_to_rerun_the_sweep_with_skip_done(hydra_run_dir, tmp_path, capsys, monkeypatch):
    args = SMOKE + signal_at(0, 1, signal.SIGINT)
    argv = ["train.py", "-m", "seed=0,1", *args]
    monkeypatch.setattr(sys, "argv", argv)
    job = hydra_run_dir(tmp_path / "sweep" / "0")
    with pytest.raises(SystemExit) as stopped:
        hydra_task(make_cfg(args + ["seed=0", "hydra.mode=MULTIRUN"], job))
    assert stopped.value.code == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"Continue with: {continue_command(argv, multirun=True)}") and "resume=" not in line
    recorded = json.loads((job / "results.json").read_text())["error"]
    assert recorded.endswith(" -m seed=0,1 " + shlex.join(args) + " skip_done=true")


@pytest.mark.parametrize("multirun", [False, True])
def test_ctrl_c_before_training_is_one_line_and_a_single_run_leaves_no_run_dir(
    multirun, hydra_run_dir, tmp_path, capsys, monkeypatch
):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(gnr650.train, "build", interrupted)  # Ctrl-C while the data are decoded
    argv = ["train.py", *(["-m", "seed=0,1"] if multirun else []), *SMOKE]
    monkeypatch.setattr(sys, "argv", argv)
    run = hydra_run_dir(tmp_path / "run")
    with pytest.raises(SystemExit) as stopped:
        hydra_task(make_cfg(SMOKE + (["hydra.mode=MULTIRUN"] if multirun else []), run))
    assert stopped.value.code == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("Stopped by SIGINT outside training; no checkpoint was saved.")
    assert line.endswith(f"Continue the sweep with: {continue_command(argv, multirun=True)}") == multirun
    assert run.exists() == multirun  # a sweep keeps its jobs' directories (failed rows in the summary)


def test_a_sweep_job_user_error_is_one_log_line_and_the_sweep_goes_on(hydra_run_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    job = hydra_run_dir(tmp_path / "sweep" / "0")
    with caplog.at_level(logging.ERROR, logger="gnr650.train"):
        assert hydra_task(make_cfg(missing_data(tmp_path) + ["hydra.mode=MULTIRUN"], job)) is None
    (record,) = [r for r in caplog.records if r.name == "gnr650.train"]
    assert record.exc_info is None and str(tmp_path / "no-such-folder") in record.getMessage()
    assert json.loads((job / "results.json").read_text())["status"] == "failed"  # kept for the sweep's summary


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_train_py_prints_a_user_error_without_traceback_and_leaves_no_run_dir(tmp_path):
    args = missing_data(tmp_path)
    proc = train_py(args, tmp_path / "user", full_error=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "train.py: error: " in out and "Traceback" not in out, out[-3000:]
    assert not list((tmp_path / "user" / "outputs" / "train" / "runs").iterdir())
    proc = train_py(args, tmp_path / "full", full_error=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" in out and "DataNotFoundError" in out, out[-3000:]


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_eval_py_with_a_mistyped_run_is_one_message_and_makes_no_folders(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"run={tmp_path / 'typo' / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert proc.returncode == 2 and proc.stderr.startswith("eval.py: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "typo" / "run").exists()


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_ctrl_c_prints_the_command_that_resumes_the_run(tmp_path):
    args = SMOKE + ["logger=csv"] + signal_at(1, 1, signal.SIGINT, marker=tmp_path / "signalled")
    proc = train_py(args, tmp_path, full_error=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    line = out.strip().splitlines()[-1]
    assert line.startswith("Stopped by SIGINT; saved ") and "Traceback" not in out, out[-3000:]
    command = line.split("Continue with: ", 1)[1]
    assert command.endswith(" resume=true")
    resumed = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert results["epochs"] == 2
