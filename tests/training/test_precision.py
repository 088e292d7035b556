"""trainer.precision=auto: bf16 where the hardware has bf16 matrix units, fp32 elsewhere; explicit values kept."""

import logging
from pathlib import Path

import pytest
import torch

from gnr650.train import train
from gnr650.training import precision
from gnr650.training.precision import cpu_has_amx_bf16, resolve_precision
from tests.helpers import make_cfg


@pytest.mark.parametrize("amx,expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_the_cpu_follows_the_amx_units(amx, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: amx)
    used, why = resolve_precision("auto", "cpu")
    assert used == expected and why.startswith("auto:") and "AMX" in why


@pytest.mark.parametrize("requested", ["32-true", "bf16-mixed", "16-mixed", 32])
def test_an_explicit_precision_is_kept(requested, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: True)
    assert resolve_precision(requested, "cpu") == (str(requested), "trainer.precision as configured")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall-back without a GPU")
def test_auto_for_a_gpu_trainer_without_a_gpu_is_fp32():
    assert resolve_precision("auto", "gpu")[0] == "32-true"


def test_amx_probe_agrees_with_the_cpu_flags(monkeypatch):
    """torch's probe and the kernel's flag list (the fall-back where torch has no probe) say the same."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    with_torch = cpu_has_amx_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_amx_bf16() == with_torch == ("amx_bf16" in cpuinfo.read_text().split())


def test_train_runs_at_the_resolved_precision_and_records_it(tmp_path, caplog):
    expected = resolve_precision("auto", "cpu")
    with caplog.at_level(logging.INFO, logger="gnr650.train"):
        results = train(make_cfg(["debug=smoke", "trainer.max_epochs=1", "trainer.precision=auto"], tmp_path))
    assert results["precision"] == {"used": expected[0], "why": expected[1]}
    assert f"Precision {expected[0]} ({expected[1]})." in caplog.text
