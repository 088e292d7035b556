"""protocol=tuned: the learning rate is chosen on validation alone, then the seeds train at it; the job's numbers are
the seeds' own."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from gnr650.data import DecodedImageDataModule, SyntheticDataModule
from gnr650.summary import collect_jobs
from gnr650.train import train
from gnr650.tuning import TuningError, choose, tuned_train
from tests.helpers import make_cfg

SCALES = [0.1, 1.0, 10.0]
TUNED = ["debug=smoke", "model=resnet18", "protocol=tuned", f"tune.lr_scales={SCALES}", "tune.seeds=[0,1]"]


def _run(tmp_path: Path, monkeypatch) -> tuple[dict, list[tuple[str, ...]]]:
    """The tuned job and the splits each final evaluation asked for, in order."""
    evaluated = []
    serve = DecodedImageDataModule.test_dataloader

    def recording(self):
        evaluated.append(tuple(self.final_splits))
        return serve(self)

    monkeypatch.setattr(DecodedImageDataModule, "test_dataloader", recording)
    return tuned_train(make_cfg(TUNED, tmp_path), train=train, overrides=[]), evaluated


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[dict, list[tuple[str, ...]], Path]:
    out = tmp_path_factory.mktemp("tuned")
    with pytest.MonkeyPatch.context() as patch:
        job, evaluated = _run(out, patch)
    return job, evaluated, out


def _garbage_test_labels(patch) -> None:
    """Every test label moved to the next class: any accuracy measured on test changes, nothing else does."""
    load = SyntheticDataModule.load

    def garbage(self):
        splits, names = load(self)
        test = splits["test"]
        splits["test"] = dataclasses.replace(test, labels=(test.labels + 1) % len(names))
        return splits, names

    patch.setattr(SyntheticDataModule, "load", garbage)


def test_the_search_never_evaluates_test_and_garbage_test_labels_change_no_choice(clean, tmp_path, monkeypatch):
    job, evaluated, _ = clean
    trials = len(SCALES)
    assert evaluated[:trials] == [("train", "val")] * trials  # the search: never the test split
    assert evaluated[trials:] == [("train", "val", "test")] * 2  # the seeds at the choice
    assert job["tuned"]["chosen"]["lr_scale"] == 10.0  # the search's, not the recipe's: the grid's largest, so
    assert job["warnings"][0].startswith("The chosen learning rate is the largest of the grid (x10 of")

    with monkeypatch.context() as patch:
        _garbage_test_labels(patch)
        spoilt, _ = _run(tmp_path / "garbage", patch)
    assert spoilt["tuned"]["trials"] == [
        t | {"fit_s": s["fit_s"]} for t, s in zip(job["tuned"]["trials"], spoilt["tuned"]["trials"])
    ]
    assert spoilt["tuned"]["chosen"] == job["tuned"]["chosen"]
    assert spoilt["metrics"]["val/acc"] == job["metrics"]["val/acc"]
    assert spoilt["metrics"]["test/acc"] != job["metrics"]["test/acc"]  # the garbage did reach the test split


def test_job_results_are_the_seeds_own_numbers(clean):
    job, _, tmp_path = clean
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and saved["tuned"] == json.loads(json.dumps(job["tuned"]))
    assert [s["run_dir"] for s in job["tuned"]["seeds"]] == ["seeds/seed_0", "seeds/seed_1"]  # inside the job
    seeds = [json.loads((tmp_path / s["run_dir"] / "results.json").read_text()) for s in job["tuned"]["seeds"]]
    assert [r["seed"] for r in seeds] == [0, 1]
    chosen = job["tuned"]["chosen"]
    for run in seeds:
        assert run["config"]["optimizer"]["lr_head"] == pytest.approx(chosen["lr_head"])
    test = [r["metrics"]["test/acc"] for r in seeds]
    assert job["metrics"]["test/acc"] == pytest.approx(statistics.fmean(test))
    low, high = stats.t.interval(0.95, len(test) - 1, loc=statistics.fmean(test), scale=stats.sem(test))
    assert (job["tuned"]["test_acc"]["low"], job["tuned"]["test_acc"]["high"]) == pytest.approx((low, high))
    trial_vals = {
        t["lr_scale"]: json.loads((tmp_path / t["run_dir"] / "results.json").read_text())["metrics"]["val/acc"]
        for t in job["tuned"]["trials"]
    }
    assert chosen["val_acc"] == max(trial_vals.values()) == trial_vals[chosen["lr_scale"]]
    trial = json.loads((tmp_path / job["tuned"]["trials"][0]["run_dir"] / "results.json").read_text())
    assert "test/acc" not in trial["metrics"] and "test" not in trial["per_class"]
    assert not (tmp_path / job["tuned"]["trials"][0]["run_dir"] / "artifacts" / "test_predictions.npz").exists()
    # the sweep summary sees one job here: trials and seeds are its parts
    assert [j.dir for j in collect_jobs(tmp_path)] == [tmp_path]


def _trial(scale, acc, status="completed"):
    return {"lr_scale": scale, "val_acc": acc, "status": status}


def test_choice_is_the_best_validation_accuracy_and_ties_go_to_the_recipe():
    assert choose([_trial(0.1, 0.5), _trial(1.0, 0.7), _trial(10.0, 0.9)])["lr_scale"] == 10.0
    assert choose([_trial(0.1, 0.9), _trial(1.0, 0.9), _trial(10.0, 0.9)])["lr_scale"] == 1.0
    assert choose([_trial(0.1, 0.8), _trial(3.0, 0.8), _trial(10.0, 0.2)])["lr_scale"] == 3.0  # |log 3| < |log 0.1|
    assert choose([_trial(1.0, None, "failed"), _trial(10.0, 0.3)])["lr_scale"] == 10.0
    with pytest.raises(TuningError, match="Every trial of the learning-rate search failed"):
        choose([_trial(1.0, None, "failed")])


def test_skip_done_reads_the_completed_trials_and_seeds_back(clean):
    """A tuned job killed after its runs completed, run again with skip_done=true: nothing trains again."""
    from hydra.core.hydra_config import HydraConfig

    job, _, out = clean
    cfg = make_cfg(TUNED + ["skip_done=true"], out)
    overrides = list(HydraConfig.get().overrides.task)
    again = tuned_train(cfg, train=lambda *args, **kwargs: pytest.fail("trained again"), overrides=overrides)
    assert again["tuned"]["chosen"] == job["tuned"]["chosen"] and again["metrics"] == job["metrics"]


@pytest.mark.parametrize(
    "override,message", [("tune.lr_scales=[0,1]", "give one or more positive scales"), ("tune.seeds=[]", "tune.seeds=")]
)
def test_settings_that_cannot_work_are_refused_before_any_run(override, message, tmp_path):
    cfg = make_cfg(TUNED + [override], tmp_path)
    with pytest.raises(TuningError, match=message):
        tuned_train(cfg, train=lambda *args, **kwargs: pytest.fail("a run started"), overrides=[])


def test_a_trial_that_cannot_train_is_skipped_and_a_bug_stops_the_search(tmp_path):
    from gnr650.training.divergence import DivergenceError

    calls = []

    def diverging_at_ten(cfg, evaluate=None):
        calls.append(cfg.optimizer.lr_head)
        if cfg.optimizer.lr_head > 1e-2:
            raise DivergenceError("loss is nan")
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        tuned_train(make_cfg(TUNED, tmp_path), train=diverging_at_ten, overrides=[])
    assert calls == [pytest.approx(1e-3)]  # the recipe's rate first; its bug ended the job
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "KeyError" in saved["error"]


def _fake_results(val: float, test: float) -> dict:
    fields = ("dataset", "model", "finetune", "data", "trainable_modules", "precision", "epochs")
    return {
        **dict.fromkeys(fields),
        "params": {"trainable": 5, "total": 10},
        "metrics": {"train/acc": 1.0, "val/acc": val, "test/acc": test},
        "per_class": {s: {"a": test} for s in ("train", "val", "test")},
        "timing": {"fit_s": 1.0},
        "warnings": [],
    }


def test_a_trial_that_diverges_is_recorded_failed_and_the_search_goes_on(tmp_path):
    from gnr650.training.divergence import DivergenceError

    def diverging_at_ten(cfg, evaluate=("train", "val", "test")):
        if cfg.optimizer.lr_head > 5e-3:  # x10 of the recipe's 1e-3
            raise DivergenceError("loss is nan")
        return _fake_results(val=cfg.optimizer.lr_head, test=0.5 + 0.1 * cfg.seed)  # the higher the rate, the better

    job = tuned_train(make_cfg(TUNED, tmp_path), train=diverging_at_ten, overrides=[])
    status = {t["lr_scale"]: t["status"] for t in job["tuned"]["trials"]}
    assert status == {0.1: "completed", 1.0: "completed", 10.0: "failed"}
    assert job["tuned"]["chosen"]["lr_scale"] == 1.0
    assert job["tuned"]["test_acc"]["mean"] == pytest.approx(0.55) and job["tuned"]["test_acc"]["n"] == 2


def test_edge_warning_only_at_an_end_of_the_grid():
    from gnr650.tuning.protocol import edge_warning

    assert edge_warning(1.0, [0.1, 1.0, 10.0]) == []
    assert "smallest of the grid (x0.1" in edge_warning(0.1, [0.1, 1.0, 10.0])[0]
    assert edge_warning(1.0, [1.0]) == []  # one scale: nothing to widen from


def test_the_summary_shows_the_choice_every_trial_and_the_seeds_interval(clean):
    from gnr650.summary import write_summary
    from gnr650.summary.tables import interval, percent

    job, _, out = clean
    summary = write_summary(out).multirun_dir / "summary.md"
    text = summary.read_text()
    chosen, test = job["tuned"]["chosen"], job["tuned"]["test_acc"]
    trials = " · ".join(f"x{t['lr_scale']:g} {percent(t['val_acc'])}" for t in job["tuned"]["trials"])
    row = (
        f"| last | {chosen['lr_head']:g} / {chosen['lr_backbone']:g} (x{chosen['lr_scale']:g}) | {trials} | "
        f"{percent(test['mean'], test['std'])} (2) | {interval(test['low'], test['high'])} |"
    )
    assert row in text, text
    assert "its row above is the mean over those seeds" in " ".join(text.split())
    assert "- **Seed**: 0, 1\n" in text  # one job, two seeds
