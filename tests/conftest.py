"""Test-session set-up (the tests are an entry point: resolvers and warning filters) and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gnr650.runs import prepare_process
from gnr650.runs.process import INTENTIONAL_WARNINGS
from tests.helpers import CIFAR_CLASSES, EUROSAT_CLASSES, write_image

prepare_process()


def pytest_configure(config: pytest.Config) -> None:
    """pytest installs its own warning filters around each test: add the by-design ones there too."""
    for message in INTENTIONAL_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


@pytest.fixture(scope="session", autouse=True)
def _default_cache_in_tmp(tmp_path_factory):
    """Runs that set no paths.cache_dir (train.py subprocesses) write their decoded stores under a temporary
    $XDG_CACHE_HOME, not the user's ~/.cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def umask() -> int:
    """A known umask (0o027) for the test, then the one before: files written get ``0o666 & ~umask``."""
    before = os.umask(0o027)
    yield 0o027
    os.umask(before)


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    """A data dir with CIFAR-like image folders, a EuroSAT layout and a plain class-per-folder set."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in CIFAR_CLASSES:
            for i in range(n):
                write_image(root / "cifar10-jpg" / split / c / f"{i:04d}.jpg", rng)
    for c in EUROSAT_CLASSES:
        for i in range(1, 11):
            write_image(root / "eurosat" / "2750" / c / f"{c}_{i}.jpg", rng, size=64)
    for c in ("cats", "dogs", "birds"):
        for i in range(10):
            write_image(root / "folder" / c / f"{i}.png", rng)
    return root
