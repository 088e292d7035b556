"""logger=mlflow writes the run's config, per-epoch and final metrics and its figures to MLflow's local store;
a tracker whose package is missing (wandb here) fails before any work, naming the extra to install."""

from __future__ import annotations

import importlib.util
import json

import pytest

from gnr650.runs.trackers import TrackerNotInstalledError
from gnr650.train import train
from tests.helpers import make_cfg


def _all_artifacts(client, run_id: str, folder: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, folder):
        found += _all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_mlflow_local_store_has_params_metrics_and_figures(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    cfg = make_cfg(
        ["debug=smoke", "model=vit_ti16", "logger=mlflow", "callbacks=[default,vit_exports]", "task_name=tracked"],
        tmp_path,
    )
    results = train(cfg)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    params = run.data.params
    assert params["finetune/name"] == cfg.finetune.name and params["model/arch"] == cfg.model.arch
    assert params["trainer/max_epochs"] == str(cfg.trainer.max_epochs)
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == cfg.trainer.max_epochs  # one value per epoch
    assert run.data.metrics["final/test/acc"] == pytest.approx(results["metrics"]["test/acc"])
    artifacts = _all_artifacts(client, run.info.run_id)
    index = json.loads((tmp_path / "artifacts" / "index.json").read_text())
    figures = {f"artifacts/{e['path']}" for e in index if e["path"].endswith(".png")}
    assert figures and figures <= set(artifacts)
    assert "results.json" in artifacts


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_tracker_package_fails_before_training(tmp_path):
    with pytest.raises(TrackerNotInstalledError, match=r"WandbLogger needs the 'wandb' package.*\.\[wandb\]"):
        train(make_cfg(["debug=smoke", "model=resnet18", "logger=wandb"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
