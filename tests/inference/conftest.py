"""Tiny trained runs (synthetic data, 32 px, one epoch, random init), built once for the inference tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnr650.train import train
from tests.helpers import make_cfg


def _train(root: Path, model: str, *overrides: str) -> Path:
    out = root / model
    train(make_cfg(["debug=smoke", f"model={model}", "trainer.max_epochs=1", *overrides], out))
    return out


@pytest.fixture(scope="session")
def resnet_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "resnet18")


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "vit_ti16")


@pytest.fixture(scope="session", params=["lora", "vpt"])
def adapted_run(request, tmp_path_factory) -> Path:
    """A ViT run whose strategy adds to the network (LoRA adapters, VPT prompts): its checkpoint holds them."""
    return _train(tmp_path_factory.mktemp(request.param), "vit_ti16", f"finetune={request.param}", "callbacks=none")


@pytest.fixture(scope="session")
def unsorted_class_run(tmp_path_factory) -> Path:
    """Synthetic classes class_0 ... class_11: their order is not their names' sorted order (class_10 before
    class_2), the order image folders give."""
    return _train(tmp_path_factory.mktemp("runs"), "resnet18", "dataset.num_classes=12", "dataset.per_class=4")
