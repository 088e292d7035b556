"""End-to-end runs of train(cfg) on synthetic data: results.json, learning, freezing, reproducibility."""

import json
import logging
import math
import re
import signal
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from gnr650.runs import RunInterrupted
from gnr650.train import build, train
from tests.helpers import ROOT, SignalAt, csv_rows, make_cfg

SMOKE = ["debug=smoke", "logger=csv", "callbacks=default"]
EPOCH_LINE = re.compile(r"Epoch (\d+)/2: train loss (\S+) acc (\S+)%, val loss (\S+) acc (\S+)% \((\S+) s\)")


def _read(path):
    return json.loads((path / "results.json").read_text())


@pytest.mark.parametrize("model", ["resnet18", "vit_ti16", "vit_b16"])
def test_smoke_run_writes_valid_results(model, tmp_path):
    results = train(make_cfg(SMOKE + [f"model={model}", "trainer.max_epochs=1"], tmp_path))
    saved = _read(tmp_path)
    assert saved["status"] == "completed" and saved["error"] is None
    assert (saved["dataset"], saved["model"], saved["finetune"], saved["seed"]) == ("synthetic", model, "last", 0)
    for key in ("train/acc", "val/acc", "test/acc"):
        assert 0.0 <= saved["metrics"][key] <= 1.0
    assert saved["metrics"] == pytest.approx(results["metrics"])
    assert saved["params"]["trainable"] < saved["params"]["total"]
    assert saved["timing"]["fit_s"] > 0 and saved["timing"]["total_s"] >= saved["timing"]["fit_s"]
    assert {"torch", "timm", "pytorch_lightning", "gnr650"} <= set(saved["versions"])
    assert set(saved["provenance"]) == {"commit", "dirty", "machine"}  # its values: tests/runs/test_provenance.py
    assert (tmp_path / "metrics.csv").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert sorted(saved["per_class"]["test"]) == [f"class_{i}" for i in range(4)]
    assert sum(map(sum, saved["confusion_matrix"]["test"])) == saved["data"]["sizes"]["test"]


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_overfits_synthetic_data_to_full_train_accuracy(tmp_path):
    results = train(
        make_cfg(
            [
                "debug=smoke",
                "model=resnet18",
                "model.stem=cifar",
                "finetune=full",
                "trainer.max_epochs=8",
                "optimizer.lr_backbone=1e-3",
                "optimizer.warmup_epochs=0",
            ],
            tmp_path,
        )
    )
    assert results["metrics"]["train/acc"] == 1.0


def test_frozen_trains_nothing_and_only_evaluates(tmp_path):
    results = train(make_cfg(SMOKE + ["model=resnet18", "finetune=frozen"], tmp_path))
    assert results["params"]["trainable"] == 0 and results["timing"]["fit_s"] == 0
    assert results["epochs"] == 0 and results["checkpoint"] is None
    assert not (tmp_path / "checkpoints").exists()
    # An untrained random head is at chance by design: no learning-rate warning for a run that trained nothing.
    assert results["metrics"]["train/acc"] <= 0.25 + 0.05
    assert results["warnings"] == [] and _read(tmp_path)["warnings"] == []


def test_each_finished_epoch_logs_one_line_with_its_metrics(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gnr650"):
        train(make_cfg(SMOKE + ["model=resnet18", "trainer.max_epochs=2"], tmp_path))
    lines = [m for r in caplog.records if (m := EPOCH_LINE.fullmatch(r.getMessage()))]
    assert [int(m[1]) for m in lines] == [1, 2]  # counted from 1, as the figures' labels count completed epochs
    for m in lines:
        logged = {
            k: float(v) for row in csv_rows(tmp_path) if row.get("epoch") == str(int(m[1]) - 1) for k, v in row.items()
        }
        assert float(m[2]) == pytest.approx(logged["train/loss"], rel=1e-3)  # printed to 4 significant digits
        assert float(m[3]) == pytest.approx(100 * logged["train/acc"], abs=0.005)
        assert float(m[4]) == pytest.approx(logged["val/loss"], rel=1e-3)
        assert float(m[5]) == pytest.approx(100 * logged["val/acc"], abs=0.005)
        assert float(m[6]) > 0


def test_a_divergent_learning_rate_is_flagged_naming_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gnr650"):
        results = train(make_cfg(SMOKE + ["model=resnet18", "optimizer.lr_head=1000"], tmp_path))
    assert results["status"] == "completed" and results["metrics"]["train/acc"] <= 0.25 + 0.05
    losses = [float(row["train/loss"]) for row in csv_rows(tmp_path) if "train/loss" in row]
    assert losses[-1] > 10 * math.log(4)  # the symptom, independently of the check
    (warning,) = results["warnings"]
    assert warning.startswith("Did not learn: final train accuracy ")
    assert f"the training loss grew to {losses[-1]:.4g} in the last epoch (first epoch {losses[0]:.4g};" in warning
    assert "the learning rate is too high (optimizer.lr_head=1000, optimizer.lr_backbone=0.0001)" in warning
    assert _read(tmp_path)["warnings"] == [warning]
    last = [r for r in caplog.records if r.name.startswith("gnr650")][-1]
    assert (last.levelname, last.getMessage()) == ("WARNING", warning)  # the run ends with it


def test_a_divergent_run_resumed_is_flagged_as_the_uninterrupted_one(tmp_path):
    """The loss-growth rule compares the whole run's first and last epochs, also when a resumed process trained
    only the last ones."""
    args = SMOKE + ["model=resnet18", "optimizer.lr_head=1000", "trainer.max_epochs=3"]
    uninterrupted = train(make_cfg(args, tmp_path / "uninterrupted"))
    stop = [f"+callbacks.signal._target_={SignalAt.__module__}.SignalAt", "+callbacks.signal.epoch=2"]
    stop += ["+callbacks.signal.batch=0", f"+callbacks.signal.signum={int(signal.SIGINT)}"]
    stop += [f"+callbacks.signal.marker={tmp_path / 'signalled'}"]  # the resumed run is not stopped again
    with pytest.raises(RunInterrupted):
        train(make_cfg(args + stop, tmp_path / "resumed"))
    resumed = train(make_cfg(args + stop + ["resume=true"], tmp_path / "resumed"))
    assert uninterrupted["warnings"] and resumed["warnings"] == uninterrupted["warnings"]


def test_a_run_that_learns_is_not_flagged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gnr650"):
        results = train(make_cfg(SMOKE + ["model=resnet18"], tmp_path))
    assert results["metrics"]["train/acc"] > 0.25 + 0.05
    assert results["warnings"] == [] and _read(tmp_path)["warnings"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("gnr650")]


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
@pytest.mark.parametrize("cache", ["auto", "false"])  # false: the frozen prefix runs in every training step
def test_top4_keeps_frozen_batchnorm_statistics(cache, tmp_path):
    cfg = make_cfg(
        SMOKE + ["model=resnet18", "finetune=top4", "trainer.max_epochs=2", f"finetune.cache_features={cache}"],
        tmp_path,
    )
    pl.seed_everything(cfg.seed)  # the same initial weights train() will build
    _, _, module = build(cfg)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    train(cfg)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    after = {k.removeprefix("net."): v for k, v in after.items() if k.startswith("net.")}
    for name in ("bn1.running_mean", "layer1.0.bn1.running_var", "layer2.1.bn2.running_mean", "layer1.0.conv1.weight"):
        assert torch.equal(before[name], after[name]), name
    for name in ("layer3.0.bn1.running_mean", "layer4.1.conv2.weight", "fc.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_frozen_modules_stay_in_eval_mode(tmp_path):
    _, _, module = build(make_cfg(SMOKE + ["model=vit_ti16", "finetune=top4"], tmp_path))
    module.train()
    assert not module.net.blocks[7].training and not module.net.patch_embed.training
    assert module.net.blocks[8].training and module.net.head.training and module.net.norm.training


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_same_seed_same_metrics(tmp_path):
    runs = [
        train(make_cfg(SMOKE + ["model=resnet18", "finetune=top4", "dataset.augment=true"], tmp_path / str(i)))
        for i in range(2)
    ]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    other = train(
        make_cfg(SMOKE + ["model=resnet18", "finetune=top4", "dataset.augment=true", "seed=1"], tmp_path / "other")
    )
    assert other["metrics"] != runs[0]["metrics"]


def test_a_resnet_run_does_not_import_timm_or_peft(tmp_path):
    """Each costs start-up time and resident memory that the disk-store memory bound counts; only the runs that use
    them import them. (transformers is not checked: torchmetrics imports it whenever it is installed.)"""
    code = (
        "import sys\n"
        "from gnr650.runs import prepare_process\n"
        "prepare_process()\n"
        "from pathlib import Path\n"
        "from gnr650.train import train\n"
        "from tests.helpers import make_cfg\n"
        f"train(make_cfg(['debug=smoke', 'model=resnet18', 'callbacks=none'], Path({str(tmp_path)!r})))\n"
        "print(sorted(m for m in ('timm', 'peft') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
