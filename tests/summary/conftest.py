"""Fixtures of the summary tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.summary.chromium import CHROMIUM, Chromium
from tests.summary.jobs import make_job


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium for the browser tests (slow tier), one per test module."""
    if not CHROMIUM:
        pytest.skip("chromium not installed")
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture
def two_by_two(tmp_path: Path) -> Path:
    """Two models x two strategies; the last job failed."""
    root = tmp_path / "multirun"
    grid = [("vit_ti16", "last"), ("vit_ti16", "full"), ("vit_s16", "last"), ("vit_s16", "full")]
    for num, (model, finetune) in enumerate(grid):
        overrides = ["experiment=eurosat-vit", f"model={model}", f"finetune={finetune}"]
        failed = num == 3
        make_job(
            root,
            num,
            overrides,
            acc=(0.9 + num / 100, 0.8 + num / 100, 0.7 + num / 100),
            status="failed" if failed else "completed",
            error="RuntimeError: CUDA out of memory\nTraceback ..." if failed else None,
            attention=1.0 if finetune == "full" else 0.5,
        )
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root
