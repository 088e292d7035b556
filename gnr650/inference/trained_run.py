"""A finished run read back from its directory: results.json (config, classes, preprocessing, the checkpoint it
recorded) and the best checkpoint's weights in the network its config builds; no pickled code is executed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gnr650.errors import UserError
from gnr650.finetune import prepare_from_config
from gnr650.models import BuiltModel, load_weights
from gnr650.training import DevicePreprocess


class RunDirError(RuntimeError, UserError):
    """A run directory cannot be used: the message names what is missing and what to do."""


@dataclass
class TrainedRun:
    """The fine-tuned network (eval mode, CPU) with what it needs around it: preprocessing and class names."""

    run_dir: Path
    results: dict[str, Any]
    config: DictConfig
    built: BuiltModel
    preprocess: DevicePreprocess
    class_names: list[str]
    data_size: tuple[int, int]
    checkpoint: Path

    @property
    def net(self) -> nn.Module:
        return self.built.net

    @property
    def in_channels(self) -> int:
        """Channels of the network's first convolution (the patch embedding of a ViT)."""
        return next(m.in_channels for m in self.net.modules() if isinstance(m, nn.Conv2d))

    def to(self, device: torch.device | str) -> TrainedRun:
        self.net.to(device)
        self.preprocess.to(device)
        return self


def read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise RunDirError(
            f"'{run_dir}' is not a run directory: it has no results.json. Give the directory train.py wrote "
            "(outputs/<task>/runs/<time>/ or a multirun job folder outputs/<task>/multiruns/<time>/<job>/)."
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"Cannot read '{path}': {e}.") from e
    if results.get("status") != "completed":
        raise RunDirError(
            f"The run in '{run_dir}' did not complete (status {results.get('status')!r}, error: "
            f"{results.get('error')}); it has no final model. Finish it with the same command plus resume=true."
        )
    return results


def recorded_checkpoint(run_dir: Path, results: dict[str, Any]) -> Path:
    """The checkpoint results.json names, found in ``run_dir`` also when the directory was moved or copied."""
    recorded = results.get("checkpoint")
    if not recorded:
        raise RunDirError(
            f"The run in '{run_dir}' recorded no checkpoint (finetune={results.get('finetune')!r} trains nothing, "
            "or it ran without checkpoints): there are no fine-tuned weights to use. Train with a strategy that "
            "trains something and callbacks=default."
        )
    path = Path(recorded)
    candidates = [path if path.is_absolute() else run_dir / path]
    if path.is_absolute() and results.get("run_dir") and path.is_relative_to(results["run_dir"]):
        candidates.append(run_dir / path.relative_to(results["run_dir"]))  # the run directory was moved
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        present = (
            sorted(p.name for p in (run_dir / "checkpoints").glob("*")) if (run_dir / "checkpoints").is_dir() else []
        )
        raise RunDirError(
            f"The checkpoint results.json records, '{recorded}', is missing from '{run_dir}' "
            f"(checkpoints/ holds: {present or 'nothing'}). Copy the run directory with its checkpoints/ folder."
        )
    return found


def load_run(run_dir: str | Path) -> TrainedRun:
    """Build the run's network from its config (``model._target_``, no pretrained weights fetched; the strategy's
    adapters or prompts added), load the best checkpoint strictly (another architecture is an error naming the
    keys) and its preprocessing."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    checkpoint = recorded_checkpoint(run_dir, results)
    spec = results.get("preprocess")
    if not spec:
        raise RunDirError(
            f"results.json in '{run_dir}' does not record the run's preprocessing (image size, normalisation): "
            "it was written by an older gnr650. Train the run again with this version."
        )
    config = OmegaConf.create(results["config"])
    class_names = list(results["data"]["classes"])
    built: BuiltModel = instantiate(
        config.model, num_classes=len(class_names), pretrained=False, weights=None, weights_dir=None
    )
    prepare_from_config(built, OmegaConf.to_container(config.finetune, resolve=True))  # LoRA adapters, VPT prompts
    load_weights(built.net, checkpoint, head=[])
    built.net.eval()
    height, width = spec["input_size"]
    # Square: resize to it as training did; else the network took the data's own (non-square) size.
    preprocess = DevicePreprocess(spec["mean"], spec["std"], img_size=height if height == width else None)
    return TrainedRun(run_dir, results, config, built, preprocess, class_names, tuple(spec["data_size"]), checkpoint)
