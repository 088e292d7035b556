"""Entry point: ``python train.py [overrides]``; see README.md and configs/."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gnr650.config import run_checked
from gnr650.runs import prepare_process

prepare_process()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from gnr650.train import hydra_task  # here, not above: `--help` needs no torch (a second or more to import)

    return hydra_task(cfg)


if __name__ == "__main__":
    run_checked(main, Path(__file__).resolve().parent / "configs", "train")
