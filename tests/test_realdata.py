"""Real-data tier: runs when GNR650_DATA_DIR (and GNR650_WEIGHTS_DIR) point at the real sets; skipped otherwise."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

from gnr650.data import Cifar10SubsetDataModule, EuroSATDataModule
from tests.helpers import CIFAR_CLASSES, ROOT, real_data_dir, real_weights

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(real_data_dir() is None, reason="GNR650_DATA_DIR does not point at the real data"),
]


def test_eurosat_full_split_is_exact_and_disjoint():
    dm = EuroSATDataModule(root=str(real_data_dir()))
    dm.setup()
    assert dm.summary() == {"train": 16_200, "val": 5_400, "test": 5_400}
    files = {s: set(dm.split(s).files) for s in ("train", "val", "test")}
    assert len(files["train"] | files["val"] | files["test"]) == 27_000
    assert torch.bincount(dm.split("val").labels).tolist() == [600, 600, 600, 500, 500, 400, 500, 600, 500, 600]
    assert dm.split("train").images.shape[1:] == (3, 64, 64)


def test_cifar_subset_from_the_jpeg_folders():
    dm = Cifar10SubsetDataModule(root=str(real_data_dir()))
    dm.setup()
    assert dm.class_names == CIFAR_CLASSES
    assert dm.summary() == {"train": 1_000, "val": 1_000, "test": 10_000}
    assert torch.bincount(dm.split("train").labels).tolist() == [100] * 10
    assert all("/horse/" in f for f, y in zip(dm.split("test").files, dm.split("test").labels.tolist()) if y == 7)


@pytest.mark.skipif(real_weights() is None, reason="GNR650_WEIGHTS_DIR has no vit_tiny_patch16_224.safetensors")
def test_strategy_sweep_on_eurosat_with_local_vit_weights(tmp_path):
    """The core issue's check 3: four strategies, exact trainable counts, full beats frozen."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "dataset=eurosat",
        "model=vit_ti16",
        "model.img_size=64",
        "dataset.fraction=0.05",
        "trainer.max_epochs=2",
        "finetune=last,top4,full,frozen",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, GNR650_WEIGHTS_DIR=str(real_weights().parent))
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, timeout=1200)
    results = {r["finetune"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    assert {k: r["params"]["trainable"] for k, r in results.items()} == {
        "last": 1_930,
        "top4": 1_781_770,
        "full": 5_491_786,
        "frozen": 0,
    }
    assert all(r["status"] == "completed" for r in results.values())
    assert results["full"]["metrics"]["test/acc"] > results["frozen"]["metrics"]["test/acc"] + 0.3
    assert results["last"]["metrics"]["test/acc"] > results["frozen"]["metrics"]["test/acc"] + 0.2
    assert (sweep / "summary.md").read_text().count("finetune=") >= 4


@pytest.mark.skipif(real_weights() is None, reason="GNR650_WEIGHTS_DIR has no vit_tiny_patch16_224.safetensors")
def test_full_size_study_two_preset_runs_as_the_readme_shows(tmp_path):
    """README's `python train.py -m experiment=eurosat-vit-full`, cut down (1% of the images, 32 px, one epoch):
    the four jobs complete at the precision auto picks here, on the seed's split proportions."""
    from gnr650.training.precision import cpu_has_amx_bf16

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=eurosat-vit-full", "dataset.fraction=0.01"]
    cmd += ["model.img_size=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    cmd += ["callbacks=default", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, GNR650_WEIGHTS_DIR=str(real_weights().parent))
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, timeout=1200)
    results = {r["finetune"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    assert sorted(results) == ["frozen", "full", "last", "top4"]
    used = "bf16-mixed" if cpu_has_amx_bf16() else "32-true"  # a ViT: bf16 wherever AMX is there
    for r in results.values():
        assert r["status"] == "completed" and r["model"] == "vit_ti16" and r["precision"]["used"] == used
        assert r["data"]["sizes"] == {"train": 162, "val": 54, "test": 54}  # 270 images split 60/20/20
    assert (sweep / "report.html").is_file()


def _readme_commands(section: str) -> list[list[str]]:
    """The commands of a README section's first bash block, as argument lists after ``python train.py``."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split(f"## {section}\n", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[2:] for line in block.splitlines() if line.startswith("python train.py")]


# Each command cut down to seconds: ViT-Ti/16 at 32 px, one epoch, two strategies, two seeds; the rest as shown.
CUT_DOWN = ["model=vit_ti16", "model.img_size=32", "trainer.max_epochs=1", "callbacks=default"]
CUT_DOWN += ["trainer.enable_progress_bar=false", "seed=0,1"]


@pytest.mark.skipif(real_weights() is None, reason="GNR650_WEIGHTS_DIR has no vit_tiny_patch16_224.safetensors")
@pytest.mark.parametrize("args", _readme_commands("A fair comparison"), ids=lambda args: " ".join(args))
def test_fair_comparison_commands_run_as_the_readme_shows(args, tmp_path):
    sweep = tmp_path / "sweep"
    extra = list(CUT_DOWN) + (["dataset.fraction=0.02"] if "dataset.protocol=vtab1k" not in args else [])
    if "experiment=eurosat-data-efficiency" in args:
        extra += ["dataset.train_per_class=1,5", "finetune=last"]
    else:
        extra += ["finetune=last,bitfit"]
    if "protocol=tuned" in args:
        extra += ["tune.lr_scales=[1,10]", "tune.seeds=[0,1]"]
    replaced = {e.split("=")[0] for e in extra}  # a key given twice would be two sweeps of it
    kept = [a for a in args if a.split("=")[0] not in replaced]
    cmd = [sys.executable, str(ROOT / "train.py"), *kept, *extra, f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, GNR650_WEIGHTS_DIR=str(real_weights().parent))
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, timeout=1800)
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(jobs) == 4 and all(job["status"] == "completed" for job in jobs)
    summary = (sweep / "summary.md").read_text()
    if "protocol=tuned" in args:
        for job in jobs:
            assert job["tuned"]["chosen"]["lr_scale"] in (1.0, 10.0) and job["tuned"]["test_acc"]["n"] == 2
            assert all("test/acc" not in t for t in job["tuned"]["trials"])
        assert "Learning rates chosen on validation" in summary
    if "experiment=eurosat-data-efficiency" in args:
        assert sorted(job["data"]["sizes"]["train"] for job in jobs) == [10, 10, 50, 50]
        assert (sweep / "accuracy_vs_dataset.train_per_class.png").is_file()
    if "dataset.protocol=vtab1k" in args:
        refit = "dataset.refit=true" in args
        assert all(job["data"]["sizes"] == {"train": 1000 if refit else 800, "val": 200, "test": 5400} for job in jobs)


# Cut down to seconds: 2% of EuroSAT at 32 px, two epochs (LP-FT needs one past its probe), three shifts (a corruption,
# a remote-sensing shift, a symmetry) on 60 test images.
HOLDS_UP_CUT = [
    "dataset.fraction=0.02",
    "model.img_size=32",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]
HOLDS_UP_CUT += [
    "robustness.images=60",
    "robustness.shifts=[gaussian_noise,cloud,rot90]",
    "robustness.wise_alphas=[0,0.5,1]",
]


@pytest.mark.skipif(real_weights() is None, reason="GNR650_WEIGHTS_DIR has no vit_tiny_patch16_224.safetensors")
@pytest.mark.parametrize("args", _readme_commands("Does it hold up?"), ids=lambda args: " ".join(args))
def test_holds_up_commands_run_as_the_readme_shows(args, tmp_path):
    extra = list(HOLDS_UP_CUT) + (["model=vit_ti16", "seed=0", "finetune=last,full,lpft"] if "-m" in args else [])
    replaced = {e.split("=")[0] for e in extra}
    kept = [a for a in args if a.split("=")[0] not in replaced]
    out = tmp_path / "out"
    where = f"hydra.sweep.dir={out}" if "-m" in args else f"hydra.run.dir={out}"
    cmd = [sys.executable, str(ROOT / "train.py"), *kept, *extra, where]
    env = dict(os.environ, GNR650_WEIGHTS_DIR=str(real_weights().parent), GNR650_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, timeout=1800)
    runs = sorted(p.parent for p in out.glob("**/results.json"))
    assert len(runs) == (3 if "-m" in args else 1)
    for run in runs:
        report = json.loads((run / "artifacts" / "robustness.json").read_text())
        assert report["images"] == 60 and len(report["shifts"]) == 5 + 5 + 1
        assert [p["alpha"] for p in report["wise"]] == [0.0, 0.5, 1.0]
        assert "Does it hold up?" in (run / "report.html").read_text()
    if "-m" in args:
        summary = json.loads((out / "summary.json").read_text())
        mce = {job["finetune"]: job["robustness/mce"] for job in summary["jobs"]}
        assert mce["last"] == 100.0 and mce["full"] > 0 and mce["lpft"] > 0
        assert "Does it hold up?" in (out / "summary.md").read_text()
