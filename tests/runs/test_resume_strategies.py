"""Every zoo strategy resumes after an interruption with the metrics of an uninterrupted run (adapters, prompts,
per-layer learning rates, the head grid and LP-FT's phases included)."""

import pytest

from gnr650.runs.last_checkpoint import RunInterrupted
from gnr650.train import train
from tests.helpers import make_cfg, signal_at
from tests.runs.test_resume import assert_same_metrics

RUN = ["debug=smoke", "model=vit_ti16", "trainer.max_epochs=2", "logger=none", "callbacks=none"]  # 4 steps an epoch
# The overrides, and the epoch whose second batch is interrupted.
STRATEGIES = {
    "bitfit": (["finetune=bitfit"], 1),
    "norm": (["finetune=norm"], 1),
    "lora": (["finetune=lora"], 1),
    "llrd": (["finetune=llrd"], 1),
    "vpt_deep": (["finetune=vpt_deep"], 1),
    "head_grid": (["finetune=last_grid"], 1),
    "first1": (["finetune=first1"], 1),
    "lpft": (["finetune=lpft"], 1),  # resumed inside the fine-tuning epoch
    "lpft_probe": (["finetune=lpft"], 0),  # interrupted in the probe, resumed across into the fine-tuning
}


@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.slow) for s in STRATEGIES])
def test_interrupted_strategy_resumes_exactly(strategy, tmp_path):
    overrides, epoch = STRATEGIES[strategy]
    args = RUN + overrides
    reference = train(make_cfg(args, tmp_path / "reference"))
    interrupt = signal_at(epoch, batch=1)
    with pytest.raises(RunInterrupted):
        train(make_cfg(args + interrupt, tmp_path / "run"))
    resumed = train(make_cfg(args + interrupt + ["resume=true"], tmp_path / "run"))
    assert resumed["resumed_from"] is not None
    assert_same_metrics(resumed["metrics"], reference["metrics"])
    if strategy == "head_grid":
        accs = [[s["val_acc"] for s in r["head_grid"]["settings"]] for r in (resumed, reference)]
        assert accs[0] == accs[1] and resumed["head_grid"]["chosen"]["lr"] == reference["head_grid"]["chosen"]["lr"]
