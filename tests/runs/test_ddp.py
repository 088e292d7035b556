"""DDP on CPU: two gloo processes write one run directory and reach the single-process results."""

from __future__ import annotations

import json

import pytest

from tests.helpers import finish, train_py

pytestmark = pytest.mark.slow

# finetune=last: the trained head sees no batch statistics, so with batch_size the global batch (each
# of the two ranks takes half of every batch) the two runs take the same steps on the same samples.
RUN = ["debug=smoke", "model=resnet18", "finetune=last", "trainer.max_epochs=3", "trainer.enable_model_summary=false"]


def test_ddp_on_cpu_with_two_processes(tmp_path):
    ddp = train_py(RUN + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path / "ddp")
    single = train_py(RUN, tmp_path / "single")
    out = finish(ddp, timeout=600)
    finish(single, timeout=600)
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out

    (run,) = (tmp_path / "ddp" / "outputs" / "train" / "runs").iterdir()  # one run directory, not one per rank
    assert [p.parent for p in (tmp_path / "ddp").rglob("results.json")] == [run]
    assert [p.parent for p in (tmp_path / "ddp").rglob(".hydra")] == [run]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()
    results = json.loads((run / "results.json").read_text())
    (single_run,) = (tmp_path / "single" / "outputs" / "train" / "runs").iterdir()
    reference = json.loads((single_run / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["trainer"]["devices"] == 2
    # Every sample counted once in the final evaluation (no padding to a multiple of the world size).
    for split, size in results["data"]["sizes"].items():
        assert sum(map(sum, results["confusion_matrix"][split])) == size
    for key, value in reference["metrics"].items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-5), key
