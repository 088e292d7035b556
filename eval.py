"""Entry point: ``python eval.py run=<run dir> [dataset=<group> dataset.root=...]``; see configs/eval.yaml."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gnr650.config import run_checked
from gnr650.runs import prepare_process

prepare_process()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from gnr650.inference.evaluate import hydra_task  # here, not above: `--help` needs no torch

    hydra_task(cfg)


if __name__ == "__main__":
    run_checked(main, Path(__file__).resolve().parent / "configs", "eval")
