"""The start is saved once: a run interrupted and resumed exports the start of the run, not of the resumed weights,
and every start-vs-end number equals the uninterrupted run's."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gnr650.interpret.index import PHASE_START, read_index
from gnr650.interpret.start_state import START_STATE_DIR
from gnr650.runs.last_checkpoint import RunInterrupted
from gnr650.train import train
from tests.helpers import finish, kill_at_first, make_cfg, real_data_dir, real_weights, signal_at, train_py

TINY = [
    "debug=smoke",
    "logger=csv",
    "analysis.probe_images=16",
    "analysis.faithfulness_images=0",  # end-only and the costliest part: the end network is the same anyway
    "analysis.tsne=false",
]
RESNET = TINY + ["model=resnet18", "finetune=full", "callbacks=[default,resnet_exports,analysis]"]
VIT_TOP4 = TINY + [
    "model=vit_ti16",
    "finetune=top4",
    "callbacks=[default,vit_exports,analysis]",
    "callbacks.attention.at_start=true",
]
# SIGINT inside the second epoch (4 steps an epoch): the resumed process starts from a mid-epoch last.ckpt.
SIGINT_IN_EPOCH_1 = signal_at(epoch=1, batch=1)
# Rewritten by every phase: on resume each is read back and written again unchanged.
NORMS_CSV = {"resnet": ("kernel_norms.csv.gz", "kernel_norm_stats.csv"), "vit": ("vit_weight_norms.csv",)}


def start_files(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every start artefact in the index and every saved start state: modification time and bytes."""
    artifacts = run / "artifacts"
    paths = [artifacts / e["path"] for e in read_index(artifacts) if e["phase"] == PHASE_START]
    paths += sorted((run / START_STATE_DIR).glob("*.pt"))
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def train_results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def read_status(run: Path) -> str:
    return train_results(run)["status"]


def analysis(run: Path) -> dict:
    result = json.loads((run / "artifacts" / "analysis.json").read_text())
    del result["seconds"]  # what each part cost: timing, not a result
    return result


def assert_same_start_and_change(run: Path, reference: Path, norms_csvs: tuple[str, ...]) -> None:
    """The resumed ``run`` exported what the uninterrupted ``reference`` did: the same index (each path once),
    the same start images and arrays, the same norms CSVs (start rows included), the same analysis numbers."""
    index, ref_index = read_index(run / "artifacts"), read_index(reference / "artifacts")
    assert len({e["path"] for e in index}) == len(index), "an index entry is listed twice"
    assert sorted(index, key=lambda e: e["path"]) == sorted(ref_index, key=lambda e: e["path"])
    for e in ref_index:
        ours, theirs = run / "artifacts" / e["path"], reference / "artifacts" / e["path"]
        if e["phase"] == PHASE_START and ours.suffix == ".png":
            assert ours.read_bytes() == theirs.read_bytes(), e["path"]
        if ours.suffix == ".npz":  # zip entries carry their write time: compare the arrays
            with np.load(ours) as a, np.load(theirs) as b:
                assert a.files == b.files
                for key in a.files:
                    assert np.array_equal(a[key], b[key]), (e["path"], key)
    for norms_csv in norms_csvs:
        norms = (run / "artifacts" / norms_csv).read_bytes()
        assert norms == (reference / "artifacts" / norms_csv).read_bytes(), norms_csv  # byte for byte (gzip too)
        text = (gzip.decompress(norms) if norms_csv.endswith(".gz") else norms).decode()
        assert "start,0," in text and "end," in text, norms_csv
    assert analysis(run) == analysis(reference)  # exact: the start pass is read back, not recomputed


@pytest.fixture(scope="module")
def resnet_reference(tmp_path_factory) -> Path:
    """An uninterrupted ResNet run: what a resumed one must equal, and another run's checkpoint to start from."""
    out = tmp_path_factory.mktemp("resnet_reference")
    train(make_cfg(RESNET, out))
    return out


def sigint_then_continue(args: list[str], how: str, run: Path) -> None:
    """A run of ``args`` stopped by SIGINT inside epoch 1, then continued with ``how`` (``resume=true``, or
    ``ckpt_path=own``: its own last.ckpt); checks that no start file was rewritten."""
    with pytest.raises(RunInterrupted):
        train(make_cfg(args + SIGINT_IN_EPOCH_1, run))
    before = start_files(run)

    how = how.replace("own", str(run / "checkpoints" / "last.ckpt"))
    resumed = train(make_cfg(args + SIGINT_IN_EPOCH_1 + [how], run))
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    after = start_files(run)  # the norms csv and plot are rewritten by every phase: now listed as "end"
    assert after == {path: before[path] for path in after}, "the resumed run rewrote a start artefact"


def assert_top4_drift(run: Path) -> None:
    drift = analysis(run)["weight_drift"]
    assert all(drift[f"blocks.{i}"] == 0.0 for i in range(8))
    assert all(drift[f"blocks.{i}"] > 0.0 for i in range(8, 12))


def test_a_resnet_run_resumed_after_sigint_keeps_the_start_of_the_run(resnet_reference, tmp_path):
    sigint_then_continue(RESNET, "resume=true", tmp_path)
    assert_same_start_and_change(tmp_path, resnet_reference, NORMS_CSV["resnet"])


@pytest.mark.slow  # three tiny ViT runs: > 30 s here
def test_a_vit_top4_run_continued_from_its_own_checkpoint_keeps_the_start_of_the_run(tmp_path):
    """``ckpt_path=`` the run's own last.ckpt (in its run directory) continues the run as resume=true does."""
    train(make_cfg(VIT_TOP4, tmp_path / "reference"))
    sigint_then_continue(VIT_TOP4, "ckpt_path=own", tmp_path / "run")
    assert_same_start_and_change(tmp_path / "run", tmp_path / "reference", NORMS_CSV["vit"])
    assert_top4_drift(tmp_path / "run")


@pytest.mark.realdata
@pytest.mark.slow  # three ViT-Ti runs on EuroSAT: minutes here
@pytest.mark.skipif(real_data_dir() is None or real_weights() is None, reason="needs the real data and ViT-Ti weights")
def test_a_pretrained_vit_top4_run_resumed_after_sigint_keeps_its_start(tmp_path):
    """Study 2's top4 job with the real ViT-Ti/16 weights (small: 5% of EuroSAT at 64 px, 2 epochs)."""
    args = [a for a in VIT_TOP4 if not a.startswith(("debug=", "analysis.probe_images"))] + [
        "dataset=eurosat",
        "model.img_size=64",
        "dataset.fraction=0.05",
        "trainer.max_epochs=2",
        "analysis.probe_images=64",
        "viz.image_class=null",
    ]
    train(make_cfg(args, tmp_path / "reference"))
    sigint_then_continue(args, "resume=true", tmp_path / "run")
    assert_same_start_and_change(tmp_path / "run", tmp_path / "reference", NORMS_CSV["vit"])
    assert_top4_drift(tmp_path / "run")


def test_ckpt_path_of_another_run_starts_from_that_checkpoints_weights(resnet_reference, tmp_path):
    """Another run's checkpoint is a new start: W0 is its weights as loaded, and the new run saves its own start."""
    last = resnet_reference / "checkpoints" / "last.ckpt"  # after its 2 epochs: one more epoch here
    loaded = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    train(make_cfg(RESNET + [f"ckpt_path={last}", "trainer.max_epochs=3"], tmp_path))

    saved = torch.load(tmp_path / START_STATE_DIR / "ChangeAnalysis.pt", map_location="cpu", weights_only=True)
    assert saved["weights"].keys() and all(torch.equal(w, loaded[f"net.{n}"]) for n, w in saved["weights"].items())
    conv1 = loaded["net.conv1.weight"].double().pow(2).sum(dim=(2, 3)).sqrt().mean()  # of every 2-D kernel
    norms = (tmp_path / "artifacts" / "kernel_norm_stats.csv").read_text().splitlines()
    start_conv1 = next(line for line in norms if line.startswith("start,") and ",conv1," in line)
    assert float(start_conv1.split(",")[6]) == pytest.approx(float(conv1), rel=1e-6)
    drift = analysis(tmp_path)["weight_drift"]["conv1"]
    end = torch.load(train_results(tmp_path)["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    w0, w1 = loaded["net.conv1.weight"].double(), end["net.conv1.weight"].double()
    assert drift == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-6)


@pytest.mark.slow  # three subprocess runs: > 1 min here
@pytest.mark.parametrize("model", ["resnet", "vit"])
def test_a_run_killed_after_a_checkpoint_and_resumed_keeps_the_start_of_the_run(model, tmp_path):
    """SIGKILL (no chance to save anything) as soon as the first last.ckpt exists, then the same command plus
    resume=true: the start exports and analysis are the uninterrupted run's."""
    args = {"resnet": RESNET, "vit": VIT_TOP4}[model] + ["last_ckpt_every_s=0"]
    reference = train_py(args, tmp_path / "reference")
    victim = train_py(args, tmp_path / "victim")
    runs = tmp_path / "victim" / "outputs" / "train" / "runs"
    kill_at_first(victim, runs, "*/checkpoints/last.ckpt")
    (run,) = runs.iterdir()
    assert not (run / "results.json").exists() or read_status(run) != "completed", "killed too late"
    before = start_files(run)

    finish(train_py(args + ["resume=true"], tmp_path / "victim"))
    assert read_status(run) == "completed"
    after = start_files(run)
    assert after == {path: before[path] for path in after}, "the resumed run rewrote a start artefact"
    finish(reference)
    (ref_run,) = (tmp_path / "reference" / "outputs" / "train" / "runs").iterdir()
    assert_same_start_and_change(run, ref_run, NORMS_CSV[model])


@pytest.mark.slow  # two sweeps of two ViT jobs: minutes here
def test_a_sweep_job_killed_and_continued_with_skip_done_reports_what_top4_changed(tmp_path):
    """The resumed top4 job of a sweep continued with skip_done=true: blocks 8-11 drifted, as in one uninterrupted."""
    args = ["-m", *[a if a != "finetune=top4" else "finetune=last,top4" for a in VIT_TOP4], "last_ckpt_every_s=0"]
    reference = train_py(args, tmp_path / "reference")
    victim = train_py(args, tmp_path / "victim")
    sweeps = tmp_path / "victim" / "outputs" / "train" / "multiruns"
    kill_at_first(victim, sweeps, "*/1/checkpoints/last.ckpt")  # job 1: top4
    (sweep,) = sweeps.iterdir()

    out = finish(train_py(args + ["skip_done=true"], tmp_path / "victim"))
    assert out.count("already completed; not training it again") == 1  # job 0 (last) is not run again
    assert read_status(sweep / "1") == "completed"
    finish(reference)
    (ref_sweep,) = (tmp_path / "reference" / "outputs" / "train" / "multiruns").iterdir()
    assert_same_start_and_change(sweep / "1", ref_sweep / "1", NORMS_CSV["vit"])
    assert_top4_drift(sweep / "1")
