"""gnr650.files: atomic writes leave files with the permissions a plain ``open()`` gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gnr650.files import atomic_write, write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _replace_with_private_file(tmp: str) -> None:
    """A writer that makes its own file (as safetensors' does): removes the given one, creates a 0o600 one."""
    os.unlink(tmp)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@pytest.mark.parametrize(
    "write",
    [
        lambda path: write_json(path, {"status": "completed"}),
        lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text("x")),
        lambda path: atomic_write(path, lambda tmp: torch.save({"w": torch.zeros(2)}, tmp)),
        lambda path: atomic_write(path, lambda tmp: save_file({"w": torch.zeros(2)}, tmp)),
        lambda path: atomic_write(path, _replace_with_private_file),
    ],
    ids=["json", "text", "torch", "safetensors", "private-writer"],
)
def test_atomic_writes_get_the_mode_open_gives(write, umask, tmp_path):
    with open(tmp_path / "plain", "w"):
        pass
    write(tmp_path / "written")
    assert _mode(tmp_path / "written") == 0o666 & ~umask == _mode(tmp_path / "plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "written"]  # no temporary file left behind


def test_a_runs_files_get_the_mode_open_gives(umask, tmp_path):
    """results.json, checkpoints, CSV logs, artefacts: everything a run writes is readable like any file."""
    from gnr650.train import train
    from tests.helpers import make_cfg

    train(make_cfg(["debug=smoke", "trainer.max_epochs=1", "logger=csv", "callbacks=default"], tmp_path / "run"))
    modes = {str(p.relative_to(tmp_path)): _mode(p) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "run/results.json" in modes and any(name.endswith(".ckpt") for name in modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
