"""eval.py: a run evaluated on its own data reproduces results.json exactly; other data with the run's classes is
evaluated with the same keys; other classes are an error naming both lists."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gnr650.data import ImageFolderDataModule
from gnr650.inference import load_run
from gnr650.inference.evaluate import ClassMismatchError, evaluate, run_dataset
from gnr650.train import train
from tests.helpers import CONFIG_DIR, ROOT, make_cfg, write_image


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
    trained = json.loads((resnet_run / "results.json").read_text())
    assert results["metrics"].keys() == trained["metrics"].keys()
    for split, size in results["data"]["sizes"].items():
        matrix = np.asarray(results["confusion_matrix"][split])
        assert matrix.sum() == size
        assert results["metrics"][f"{split}/acc"] == pytest.approx(np.trace(matrix) / size)
        assert list(results["per_class"][split]) == run.class_names


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
