"""eval.py: a run evaluated on its own data reproduces results.json exactly; every dataset group (synthetic, image
folders in both layouts, EuroSAT and CIFAR-10 variants on the real data) composes under eval.yaml and is evaluated
with the same keys; other classes, or the same in another order, are an error naming both lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from gnr650.data import ImageFolderDataModule
from gnr650.errors import EXIT_USER_ERROR
from gnr650.inference import load_run
from gnr650.inference.evaluate import ClassMismatchError, evaluate, hydra_task, run_dataset
from gnr650.inference.predict import predict_files
from gnr650.train import train
from tests.helpers import (
    CIFAR_CLASSES,
    CONFIG_DIR,
    EUROSAT_CLASSES,
    ROOT,
    make_cfg,
    real_data_dir,
    write_image,
)


def test_eval_py_on_the_runs_own_data_reproduces_results_json(vit_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"run={vit_run}", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval_results.json").read_text())
    trained = json.loads((vit_run / "results.json").read_text())
    assert evaluated["metrics"] == trained["metrics"]  # exact, losses included
    assert evaluated["per_class"] == trained["per_class"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]


def _assert_evaluates_to_its_results(run) -> None:
    """The loaded run, evaluated in process on its own data, gives the metrics its results.json recorded."""
    results = evaluate(run, instantiate(run_dataset(run, OmegaConf.create({}))), "cpu")
    trained = json.loads((run.run_dir / "results.json").read_text())
    assert results["metrics"] == pytest.approx(trained["metrics"], abs=1e-6)


def test_adapters_and_prompts_are_rebuilt_before_the_checkpoint_loads(adapted_run):
    """A LoRA or VPT checkpoint holds parameters the plain network lacks; the run evaluates to its results.json."""
    run = load_run(adapted_run)
    assert any(".lora_A." in n or n.endswith("prompts") for n, _ in run.net.named_parameters())
    _assert_evaluates_to_its_results(run)


def test_a_head_grid_run_loads_with_its_chosen_head(tmp_path):
    """The checkpoint also holds the grid's candidate heads; the network is its ``net`` (chosen head inside)."""
    train(make_cfg(["debug=smoke", "model=vit_ti16", "trainer.max_epochs=1", "finetune=last_grid"], tmp_path))
    _assert_evaluates_to_its_results(load_run(tmp_path))


def test_other_data_with_the_runs_classes(resnet_run, tmp_path):
    run = load_run(resnet_run)
    rng = np.random.default_rng(0)
    for c in run.class_names:
        for i in range(5):
            write_image(tmp_path / c / f"{i}.png", rng, size=40)  # another size: resized as training did
    results = evaluate(run, ImageFolderDataModule(str(tmp_path), seed=0, cache_dir=str(tmp_path / "cache")), "cpu")
    assert_consistent_evaluation(results, resnet_run, run.class_names)


def test_class_mismatch_names_both_lists(resnet_run, fake_data, tmp_path):
    run = load_run(resnet_run)
    dm = ImageFolderDataModule(str(fake_data / "folder"), seed=0, cache_dir=str(tmp_path))
    with pytest.raises(ClassMismatchError) as error:
        evaluate(run, dm, "cpu")
    assert str(["birds", "cats", "dogs"]) in str(error.value) and str(run.class_names) in str(error.value)


def _eval_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("eval", overrides=overrides)


def test_eval_config_picks_the_runs_data_or_the_chosen_group_with_the_runs_seed(resnet_run, tmp_path):
    run = load_run(resnet_run)
    own = run_dataset(run, _eval_cfg([f"run={resnet_run}"]))
    assert own == run.config.dataset
    chosen = run_dataset(run, _eval_cfg([f"run={resnet_run}", "dataset=imagefolder", f"dataset.root={tmp_path}"]))
    assert chosen._target_ == "gnr650.data.ImageFolderDataModule" and chosen.root == str(tmp_path)
    assert chosen.seed == run.config.seed
    seeded = _eval_cfg([f"run={resnet_run}", "dataset=imagefolder", f"dataset.root={tmp_path}", "seed=7"])
    assert run_dataset(run, seeded).seed == 7


def assert_consistent_evaluation(results: dict, run_dir: Path, classes: list[str]) -> None:
    """results.json's metric keys; per split: the confusion matrix counts the split's images, the accuracy is its
    trace share, the per-class accuracies name the run's classes in its order."""
    trained = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"].keys() == trained["metrics"].keys()
    assert results["data"]["classes"] == classes
    for split, size in results["data"]["sizes"].items():
        matrix = np.asarray(results["confusion_matrix"][split])
        assert matrix.shape == (len(classes), len(classes)) and matrix.sum() == size
        assert results["metrics"][f"{split}/acc"] == pytest.approx(np.trace(matrix) / size)
        assert list(results["per_class"][split]) == classes


def assert_reproduces_results_json(results: dict, run_dir: Path) -> None:
    """The same data as training's final evaluation: the same counts, the same metrics."""
    trained = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["sizes"] == trained["data"]["sizes"]
    assert results["confusion_matrix"] == trained["confusion_matrix"]
    assert results["metrics"] == pytest.approx(trained["metrics"], abs=1e-6)


def eval_task(overrides: list[str], out_dir: Path) -> dict:
    """``eval.py overrides`` in process (on the CPU): hydra_task on configs/eval.yaml, writing into ``out_dir``."""
    cfg = _eval_cfg(["accelerator=cpu", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    results = hydra_task(cfg)
    assert json.loads((out_dir / "eval_results.json").read_text())["metrics"] == results["metrics"]
    return results


def write_class_folders(root: Path, classes: list[str], per_class: int, size: int = 32) -> None:
    rng = np.random.default_rng(1)
    for c in classes:
        for i in range(per_class):
            write_image(root / c / f"{i}.png", rng, size=size)


@pytest.mark.parametrize("group", sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml")))
def test_every_dataset_group_resolves_under_the_eval_config(group, tmp_path):
    """Every interpolation of the group (its own, dataset_base.yaml's, paths') has a value under eval.yaml; the
    processes sharing the memory budget are the one evaluation runs, and still train.py's trainer.devices."""
    dataset = OmegaConf.to_container(_eval_cfg(["run=x", f"dataset={group}"]).dataset, resolve=True)
    assert dataset["devices"] == 1 and dataset["eval_batch_size"] == 512
    trained = make_cfg(["trainer=ddp", "trainer.devices=3", f"dataset={group}"], tmp_path)
    assert OmegaConf.to_container(trained.dataset, resolve=True)["devices"] == 3


def test_eval_py_on_an_image_folder_with_the_runs_classes(resnet_run, tmp_path):
    """README's command for new data; a <class>/ folder is split 60/20/20 (seeded) and every split is evaluated,
    so every image counts once; the results land in <run dir>/eval/<time>/."""
    run = load_run(resnet_run)
    write_class_folders(tmp_path / "data", run.class_names, per_class=5, size=40)  # another size: resized
    before = set((resnet_run / "eval").glob("*/eval_results.json"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"run={resnet_run}", "dataset=imagefolder"]
        + [f"dataset.root={tmp_path / 'data'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (written,) = set((resnet_run / "eval").glob("*/eval_results.json")) - before
    results = json.loads(written.read_text())
    assert results["dataset"] == "imagefolder"
    n = len(run.class_names)
    assert results["data"]["sizes"] == {"train": 3 * n, "val": n, "test": n}
    assert_consistent_evaluation(results, resnet_run, run.class_names)


def test_a_pre_split_image_folder_is_evaluated_split_by_split_as_predict_classifies_it(resnet_run, tmp_path):
    """train/val/test/<class>/ folders are evaluated as they are; each confusion matrix is the one the run's
    predictions (gnr650-predict's) on that split's files give."""
    run = load_run(resnet_run)
    counts = {"train": 4, "val": 3, "test": 2}
    for split, per_class in counts.items():
        write_class_folders(tmp_path / "data" / split, run.class_names, per_class)
    results = eval_task([f"run={resnet_run}", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}"], tmp_path)
    assert results["data"]["sizes"] == {s: n * len(run.class_names) for s, n in counts.items()}
    assert_consistent_evaluation(results, resnet_run, run.class_names)
    for split in counts:
        files = sorted((tmp_path / "data" / split).rglob("*.png"))
        matrix = np.zeros((len(run.class_names),) * 2, dtype=int)
        for p in predict_files(run, files, topk=1):
            matrix[run.class_names.index(Path(p.file).parent.name), run.class_names.index(p.classes[0])] += 1
        assert results["confusion_matrix"][split] == matrix.tolist()


def test_the_synthetic_group_reproduces_the_run_and_its_variants_are_other_data(resnet_run, tmp_path):
    """dataset=synthetic with the run's settings and seed is the run's data; a variant has its own sizes."""
    assert_reproduces_results_json(eval_task([f"run={resnet_run}", "dataset=synthetic"], tmp_path / "same"), resnet_run)
    other = eval_task([f"run={resnet_run}", "dataset=synthetic", "dataset.test_per_class=3", "seed=5"], tmp_path)
    assert other["data"]["sizes"] == {"train": 64, "val": 32, "test": 12} and other["config"]["seed"] == 5
    assert_consistent_evaluation(other, resnet_run, load_run(resnet_run).class_names)


def eval_error(overrides: list[str], out_dir: Path, capsys) -> str:
    """``eval.py overrides`` that must stop with a user error: its one-line message (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as stopped:
        eval_task(overrides, out_dir)
    err = capsys.readouterr().err
    assert stopped.value.code == EXIT_USER_ERROR and "Traceback" not in err, err
    assert err.startswith("eval.py: error: ") and not (out_dir / "eval_results.json").exists()
    return err


def test_other_class_names_through_eval_are_an_error_naming_both_lists(resnet_run, fake_data, tmp_path, capsys):
    err = eval_error(
        [f"run={resnet_run}", "dataset=imagefolder", f"dataset.root={fake_data / 'folder'}"], tmp_path, capsys
    )
    assert str(["birds", "cats", "dogs"]) in err
    assert str(load_run(resnet_run).class_names) in err


def test_the_runs_classes_in_another_order_are_an_error(unsorted_class_run, tmp_path, capsys):
    """Image folders come in sorted order (class_10 before class_2): evaluating would mislabel, so it stops."""
    classes = load_run(unsorted_class_run).class_names
    write_class_folders(tmp_path / "data", classes, per_class=5)
    overrides = [f"run={unsorted_class_run}", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}"]
    err = eval_error(overrides, tmp_path, capsys)
    assert "the same names in another order" in err
    assert str(sorted(classes)) in err and str(classes) in err


def on_real_data(test):
    """Marks ``test`` realdata, skipped where GNR650_DATA_DIR does not point at the real data."""
    skip = pytest.mark.skipif(real_data_dir() is None, reason="GNR650_DATA_DIR does not point at the real data")
    return pytest.mark.realdata(skip(test))


def _train_on_real_data(root: Path, *overrides: str) -> Path:
    """A one-epoch ResNet-18 (random init, 32 px) on a small real data set."""
    train(make_cfg(["debug=smoke", "model=resnet18", "trainer.max_epochs=1", *overrides], root))
    return root


@pytest.fixture(scope="module")
def eurosat_run(tmp_path_factory) -> Path:
    return _train_on_real_data(tmp_path_factory.mktemp("eurosat"), "dataset=eurosat", "dataset.fraction=0.02")


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> Path:
    return _train_on_real_data(
        tmp_path_factory.mktemp("cifar"), "dataset=cifar10-subset", "dataset.per_class=2", "dataset.val_per_class=2"
    )


@pytest.mark.parametrize(
    "dataset",
    [
        ["dataset=eurosat", "dataset.fraction=0.02"],
        ["dataset=imagefolder", "dataset.root=${paths.data_dir}/eurosat/2750", "dataset.fraction=0.02"],
    ],
    ids=["eurosat", "imagefolder"],
)
@on_real_data
def test_eurosat_chosen_as_the_run_had_it_reproduces_the_run(eurosat_run, dataset, tmp_path):
    """The run's fraction and seed, through the eurosat group or EuroSAT's class folders as an image folder
    (the same seeded subset and split): training's own final evaluation."""
    assert_reproduces_results_json(eval_task([f"run={eurosat_run}", *dataset], tmp_path), eurosat_run)


@on_real_data
def test_eurosat_with_another_fraction(eurosat_run, tmp_path):
    """dataset.fraction=0.05: 5% of each class (rounded), each class split 60/20/20 (the last part takes the rest)."""
    results = eval_task([f"run={eurosat_run}", "dataset=eurosat", "dataset.fraction=0.05"], tmp_path)
    expected = {"train": 0, "val": 0, "test": 0}
    for class_dir in sorted((real_data_dir() / "eurosat" / "2750").iterdir()):
        n = round(len(list(class_dir.glob("*.jpg"))) * 0.05)
        expected["train"] += round(n * 0.6)
        expected["val"] += round(n * 0.2)
        expected["test"] += n - round(n * 0.6) - round(n * 0.2)
    assert results["data"]["sizes"] == expected
    assert_consistent_evaluation(results, eurosat_run, EUROSAT_CLASSES)


@on_real_data
def test_cifar_subset_with_other_per_class_counts_keeps_the_whole_test_split(cifar_run, tmp_path):
    """per_class / val_per_class change train and val; test is all 10,000 test images in both, so its metrics
    are the run's."""
    results = eval_task(
        [f"run={cifar_run}", "dataset=cifar10-subset", "dataset.per_class=5", "dataset.val_per_class=3"], tmp_path
    )
    assert results["data"]["sizes"] == {"train": 50, "val": 30, "test": 10_000}
    assert_consistent_evaluation(results, cifar_run, CIFAR_CLASSES)
    trained = json.loads((cifar_run / "results.json").read_text())
    assert results["confusion_matrix"]["test"] == trained["confusion_matrix"]["test"]
    for key in ("test/acc", "test/acc_macro", "test/loss"):
        assert results["metrics"][key] == pytest.approx(trained["metrics"][key], abs=1e-6)
