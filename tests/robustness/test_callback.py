"""The Robustness callback in real tiny runs: its invariants against independent computations (an identity shift
through the store equals clean, WiSE's ends, the start it interpolates from after a resume), bit-identical shifts
across runs and storages, shifts that cannot apply, and settings refused before any data is read."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from gnr650.errors import user_error
from gnr650.inference.trained_run import load_run
from gnr650.interpret.analysis import classifier
from gnr650.interpret.index import ArtifactKind
from gnr650.robustness import Robustness
from gnr650.robustness.callback import RobustnessSettingError
from gnr650.robustness.shifts import Shift, ShiftSettingError
from gnr650.runs.last_checkpoint import RunInterrupted
from gnr650.train import train
from tests.helpers import make_cfg, signal_at, tiny_overrides
from tests.summary.html_report import parse, table

SUITE = ["callbacks=[default,robustness]", "robustness.shifts=[haze,rot90,gaussian_noise]"]
RESNET_FULL = ["debug=smoke", "model=resnet18", "finetune=full", "logger=none", *SUITE]


class KeepStart(pl.Callback):
    """Saves the network's state dict at fit start: the start WiSE should interpolate from, kept independently."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_start(self, trainer, pl_module):
        torch.save({k: v.clone() for k, v in pl_module.net.state_dict().items()}, self.path)


def _robustness(run_dir) -> dict:
    index = json.loads((run_dir / "artifacts" / "index.json").read_text())
    kinds = {e["kind"]: e["path"] for e in index}
    for kind in (ArtifactKind.ROBUSTNESS_JSON, ArtifactKind.ROBUSTNESS_CSV, ArtifactKind.RELIABILITY_PLOT):
        assert (run_dir / "artifacts" / kinds[kind]).is_file(), kind
    return json.loads((run_dir / "artifacts" / kinds[ArtifactKind.ROBUSTNESS_JSON]).read_text())


def _accuracy(net, preprocess, images, labels) -> float:
    with torch.no_grad():
        return float((net.eval()(preprocess(images)).argmax(1) == labels).double().mean())


def test_wise_ends_are_the_job_itself_and_the_start_backbone_with_the_fine_tuned_head(tmp_path):
    keep = [f"+callbacks.keep._target_={KeepStart.__module__}.KeepStart", f"+callbacks.keep.path={tmp_path / 'w0.pt'}"]
    cfg = make_cfg(RESNET_FULL + ["robustness.images=null", *keep], tmp_path / "run")
    results = train(cfg)
    got = _robustness(tmp_path / "run")
    wise = {p["alpha"]: p for p in got["wise"]}
    assert list(wise) == [0.0, 0.25, 0.5, 0.75, 1.0] and got["images"] == 32  # the whole test split
    assert wise[1.0]["clean_acc"] == results["metrics"]["test/acc"] == got["clean"]["acc"]

    run = load_run(tmp_path / "run")
    dm = instantiate(cfg.dataset)
    test = dm.split("test")
    head = classifier(run.net)[0]
    start = torch.load(tmp_path / "w0.pt", weights_only=True)
    mixed = {
        k: v if k.startswith(head + ".") or not v.is_floating_point() else start[k]
        for k, v in run.net.state_dict().items()
    }
    assert any(not torch.equal(start[k], v) for k, v in run.net.state_dict().items()), (
        "full fine-tuning changed nothing"
    )
    run.net.load_state_dict(mixed)
    assert wise[0.0]["clean_acc"] == _accuracy(run.net, run.preprocess, test.images, test.labels)
    _check_run_report(tmp_path / "run", got)


def _check_run_report(run_dir, got: dict) -> None:
    """The run's report.html shows the suite as robustness.json has it."""
    page = parse((run_dir / "report.html").read_text())
    shown = {row["Shift"]: row for row in table(page, "shift-table")}
    assert list(shown) == ["gaussian_noise", "haze", "rot90"]  # suite order
    for name, row in shown.items():
        accs = [r["acc"] for r in got["shifts"] if r["shift"] == name]
        assert row["Mean"] == f"{100 * sum(accs) / len(accs):.2f}%"
        assert [row[f"Level {lv}"] for lv in range(1, len(accs) + 1)] == [f"{100 * a:.2f}%" for a in accs]
    wise = table(page, "wise-table")
    assert [float(r["α (0: start backbone, 1: fine-tuned)"]) for r in wise] == [p["alpha"] for p in got["wise"]]
    assert [r["Clean accuracy"] for r in wise] == [f"{100 * p['clean_acc']:.2f}%" for p in got["wise"]]
    assert "artifacts/reliability.png" in page.links and len(page.images) == 1  # logger=none: no learning curves


def test_an_identity_shift_through_the_store_is_exactly_clean(tmp_path, monkeypatch):
    identity = Shift("identity", "symmetry", 1, lambda image, level, seed: image.copy())
    monkeypatch.setattr(Robustness, "__init__", _with_shifts(Robustness.__init__, [identity]))
    train(make_cfg(["debug=smoke", "model=resnet18", "logger=none", *SUITE, "robustness.wise_alphas=[]"], tmp_path))
    got = _robustness(tmp_path)
    (row,) = got["shifts"]
    assert row["shift"] == "identity" and list((tmp_path / "cache").glob("shift-identity-1-*.u8"))
    assert {k: row[k] for k in ("acc", "ece", "nll", "brier")} == got["clean"]
    assert got["wise"] == []


def _with_shifts(init, shifts):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.shifts = shifts

    return patched


def test_shifts_are_bit_identical_across_runs_and_storages(fake_data, tmp_path):
    rows, stores = {}, {}
    for storage in ("memory", "disk"):
        args = tiny_overrides("eurosat", fake_data) + ["model=resnet18", f"dataset.storage={storage}"]
        args += [
            "callbacks=[default,robustness]",
            "robustness.shifts=[gaussian_noise,cloud]",
            "robustness.wise_alphas=[]",
        ]
        train(make_cfg(args, tmp_path / storage))
        rows[storage] = (tmp_path / storage / "artifacts" / "robustness.csv").read_text()
        stores[storage] = {p.name: p.read_bytes() for p in (tmp_path / storage / "cache").glob("shift-*.u8")}
    assert rows["memory"] == rows["disk"]
    assert len(stores["memory"]) == 10 and stores["memory"] == stores["disk"]


def test_a_shift_that_cannot_apply_is_skipped_with_its_reason(tmp_path):
    args = ["debug=smoke", "model=resnet18", "logger=none", "dataset.image_size=28", "model.img_size=28"]
    train(make_cfg(args + SUITE + ["robustness.wise_alphas=[]"], tmp_path))
    got = _robustness(tmp_path)
    assert got["skipped"] == [
        {
            "shift": "gaussian_noise",
            "reason": "gaussian_noise (imagecorruptions) needs images of at least 32 x 32 pixels; these are 28 x 28.",
        }
    ]
    assert {r["shift"] for r in got["shifts"]} == {"haze", "rot90"} and got["mean_corruption_acc"] is None


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("robustness.images=0", RobustnessSettingError, "robustness.images must be a positive number of images"),
        ("robustness.shifts=[hase]", ShiftSettingError, "'hase' is no shift or group"),
        ("robustness.wise_alphas=[0.5,2]", RobustnessSettingError, r"wise_alphas must lie in \[0, 1\]"),
    ],
)
def test_bad_settings_are_refused_before_any_data_is_read(override, error, message, tmp_path):
    """The data folder is missing: had the data been read first, that would be the error."""
    args = tiny_overrides("eurosat", tmp_path / "missing") + ["model=resnet18", *SUITE, override]
    with pytest.raises(Exception) as caught:
        train(make_cfg(args, tmp_path / "run"))
    assert isinstance(user_error(caught.value), error)
    assert re.search(message, str(user_error(caught.value)))


@pytest.mark.slow  # three runs, as the zoo's resume tests
def test_a_resumed_run_interpolates_from_the_true_start(tmp_path):
    reference = train(make_cfg(RESNET_FULL, tmp_path / "reference"))
    interrupt = signal_at(epoch=1, batch=1)
    with pytest.raises(RunInterrupted):
        train(make_cfg(RESNET_FULL + interrupt, tmp_path / "run"))
    resumed = train(make_cfg(RESNET_FULL + interrupt + ["resume=true"], tmp_path / "run"))
    assert resumed["resumed_from"] is not None
    got, want = _robustness(tmp_path / "run"), _robustness(tmp_path / "reference")
    assert got["wise"] == want["wise"] and got["shifts"] == want["shifts"]
    assert reference["metrics"]["test/acc"] == resumed["metrics"]["test/acc"]
    assert len({p["clean_acc"] for p in got["wise"]}) > 1 or np.ptp([p["shifted_acc"] for p in got["wise"]]) > 0


def test_a_head_only_job_has_a_flat_wise_curve_without_evaluating_it_again(tmp_path, monkeypatch):
    """finetune=last: the start backbone is the end one, so every alpha is the evaluated network; the suite's only
    passes are val (temperature), clean and one per shift level."""
    calls = []
    logits = Robustness._logits
    monkeypatch.setattr(Robustness, "_logits", lambda self, *a: calls.append(1) or logits(self, *a))
    train(make_cfg(["debug=smoke", "model=resnet18", "finetune=last", "logger=none", *SUITE], tmp_path))
    got = _robustness(tmp_path)
    assert len(calls) == 2 + len(got["shifts"]) == 2 + 5 + 1 + 5
    haze3 = next(r["acc"] for r in got["shifts"] if r["shift"] == "haze" and r["level"] == 3)
    noise3 = next(r["acc"] for r in got["shifts"] if r["shift"] == "gaussian_noise" and r["level"] == 3)
    rot = next(r["acc"] for r in got["shifts"] if r["shift"] == "rot90")
    for point in got["wise"]:
        assert point["clean_acc"] == got["clean"]["acc"]
        assert point["shifted_acc"] == pytest.approx((haze3 + noise3 + rot) / 3, abs=1e-12)
