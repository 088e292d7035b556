"""The linear-probe grid: the chosen head is the head trained alone with its setting; the grid is reported."""

import pytest

from gnr650.finetune import StrategyError
from gnr650.train import train
from tests.helpers import make_cfg

SMOKE = ["debug=smoke", "model=vit_ti16", "trainer.max_epochs=2", "logger=none", "callbacks=none", "finetune=last"]
GRID = [
    "finetune.head_grid=true",
    "finetune.head_grid_lrs=[1e-4,1e-3,1e-2,1e-1]",
    "finetune.head_grid_weight_decays=[0,0.05,0.5]",
]


def test_chosen_head_equals_the_head_trained_alone(tmp_path):
    grid = train(make_cfg(SMOKE + GRID, tmp_path / "grid"))
    settings, chosen = grid["head_grid"]["settings"], grid["head_grid"]["chosen"]
    assert len(settings) == 12 and {(s["lr"], s["weight_decay"]) for s in settings} == {
        (lr, wd) for lr in (1e-4, 1e-3, 1e-2, 1e-1) for wd in (0.0, 0.05, 0.5)
    }
    assert chosen["val_acc"] == max(s["val_acc"] for s in settings)
    assert len({s["val_loss"] for s in settings}) > 1  # the settings trained differently
    alone = train(
        make_cfg(
            SMOKE + [f"optimizer.lr_head={chosen['lr']}", f"optimizer.weight_decay={chosen['weight_decay']}"],
            tmp_path / "alone",
        )
    )
    assert alone["metrics"] == pytest.approx(grid["metrics"], rel=1e-6, abs=1e-7)
    assert alone["metrics"]["val/acc"] == chosen["val_acc"]
    assert alone["metrics"]["val/loss"] == pytest.approx(chosen["val_loss"], rel=1e-6)


def test_grid_only_for_the_linear_probe(tmp_path):
    with pytest.raises(StrategyError, match="use it with finetune=last"):
        train(make_cfg(SMOKE + ["finetune=top4", "finetune.head_grid=true"], tmp_path))
