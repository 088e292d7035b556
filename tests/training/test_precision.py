"""trainer.precision=auto: bf16 where measured faster (a transformer on AMX), fp32 elsewhere; explicit values kept."""

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from gnr650.train import train
from gnr650.training import precision
from gnr650.training.precision import cpu_has_amx_bf16, resolve_precision
from tests.helpers import make_cfg

VIT = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32)
RESNET = torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize(
    "amx,net,expected",
    [(True, VIT, "bf16-mixed"), (True, RESNET, "32-true"), (False, VIT, "32-true"), (False, RESNET, "32-true")],
    ids=["amx-vit", "amx-resnet", "no-amx-vit", "no-amx-resnet"],
)
def test_auto_on_the_cpu_follows_the_amx_units_and_the_network(amx, net, expected, monkeypatch):
    """bf16 where measured faster: a transformer on AMX; a conv net (ResNet-18 at 32 px measured slower) stays fp32."""
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: amx)
    used, why = resolve_precision("auto", "cpu", net)
    assert used == expected and why.startswith("auto:")
    assert ("conv net" in why) == (amx and net is RESNET) and ("AMX" in why)


def test_auto_on_an_amx_cpu_needs_the_network(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: True)
    with pytest.raises(ValueError, match="pass net"):
        resolve_precision("auto", "cpu")


@pytest.mark.parametrize("requested", ["32-true", "bf16-mixed", "16-mixed", 32])
def test_an_explicit_precision_is_kept(requested, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_amx_bf16", lambda: True)
    assert resolve_precision(requested, "cpu") == (str(requested), "trainer.precision as configured")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall-back without a GPU")
def test_auto_for_a_gpu_trainer_without_a_gpu_is_fp32():
    assert resolve_precision("auto", "gpu", VIT)[0] == "32-true"


def test_amx_probe_agrees_with_the_cpu_flags(monkeypatch):
    """torch's probe and the kernel's flag list (the fall-back where torch has no probe) say the same."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    with_torch = cpu_has_amx_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_amx_bf16() == with_torch == ("amx_bf16" in cpuinfo.read_text().split())


@pytest.mark.parametrize("model", ["vit_ti16", "resnet18"])
def test_train_runs_at_the_resolved_precision_and_records_it(model, tmp_path, caplog):
    overrides = ["debug=smoke", f"model={model}", "trainer.max_epochs=1", "trainer.precision=auto"]
    expected = resolve_precision("auto", "cpu", VIT if model == "vit_ti16" else RESNET)
    with caplog.at_level(logging.INFO, logger="gnr650.train"):
        results = train(make_cfg(overrides, tmp_path))
    assert results["precision"] == {"used": expected[0], "why": expected[1]}
    assert f"Precision {expected[0]} ({expected[1]})." in caplog.text
