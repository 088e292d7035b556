"""gnr650-export: safetensors that timm rebuilds with the run's logits; ONNX that ONNX Runtime runs with
PyTorch's logits; clear errors for what cannot be exported."""

from __future__ import annotations

import json
import logging
import re
import stat
import sys

import numpy as np
import pytest
import timm
import torch
from torch import nn

from gnr650.inference import load_run
from gnr650.inference.cli import export_main
from gnr650.inference.export import (
    ONNX_CHATTY_LOGGERS,
    ONNX_TOLERANCE,
    ExportError,
    onnx_export,
    quiet_onnx_passes,
    timm_network,
)


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


@pytest.mark.parametrize("fixture", ["resnet_run", "vit_run"])
def test_safetensors_reload_through_timm_gives_the_runs_logits(fixture, request, tmp_path):
    run_dir = request.getfixturevalue(fixture)
    assert export_main([str(run_dir), "--format", "safetensors", "--out", str(tmp_path)]) == 0
    run = load_run(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_classes"] == len(results["data"]["classes"])
    assert config["label_names"] == results["data"]["classes"]
    assert config["pretrained_cfg"]["mean"] == pytest.approx(results["preprocess"]["mean"])
    assert config["pretrained_cfg"]["std"] == pytest.approx(results["preprocess"]["std"])
    assert config["pretrained_cfg"]["input_size"] == [3, *results["preprocess"]["input_size"]]
    x = torch.randn(3, *config["pretrained_cfg"]["input_size"])
    expected = _logits(run.net, x)
    from_dir = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    by_name = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(tmp_path / "model.safetensors"), "num_classes": config["num_classes"]},
        num_classes=config["num_classes"],
        **model_args,
    )
    for model in (from_dir, by_name):
        assert (_logits(model, x) - expected).abs().max() <= 1e-6


def _modes(directory) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_exported_files_are_readable_like_any_file(fmt, resnet_run, umask, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    assert export_main([str(resnet_run), "--format", fmt, "--out", str(tmp_path)]) == 0
    assert _modes(tmp_path) == {f"model.{fmt}": 0o666 & ~umask, "config.json": 0o666 & ~umask}


def test_lora_run_exports_merged_for_timm_and_vpt_run_only_to_onnx(adapted_run, tmp_path, capsys):
    run = load_run(adapted_run)
    x = torch.randn(3, 3, *run.results["preprocess"]["input_size"])
    if run.config.finetune.name == "vpt":
        with pytest.raises(SystemExit) as stopped:
            export_main([str(adapted_run), "--format", "safetensors", "--out", str(tmp_path)])
        assert stopped.value.code == 2 and re.search("VPT prompt tokens.*--format onnx", capsys.readouterr().err)
        assert not (tmp_path / "model.safetensors").exists()
        onnxruntime = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        assert export_main([str(adapted_run), "--format", "onnx", "--out", str(tmp_path)]) == 0
        session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
        [logits] = session.run(None, {"images": x.numpy()})
        assert np.abs(logits - _logits(run.net, x).numpy()).max() <= ONNX_TOLERANCE
        return
    assert export_main([str(adapted_run), "--format", "safetensors", "--out", str(tmp_path)]) == 0
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert all(type(block.attn.qkv) is nn.Linear for block in reloaded.blocks)  # adapters merged into the layer
    assert (_logits(reloaded, x) - _logits(run.net, x)).abs().max() <= 1e-5


def test_cifar_stem_resnet_has_no_timm_equivalent(resnet_run):
    run = load_run(resnet_run)
    run.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # what model.stem=cifar builds
    with pytest.raises(ExportError, match="no timm equivalent.*--format onnx"):
        timm_network(run)


def test_onnx_export_matches_onnx_runtime(resnet_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert export_main([str(resnet_run), "--format", "onnx", "--out", str(tmp_path)]) == 0
    run = load_run(resnet_run)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["label_names"] == run.class_names
    x = torch.randn(7, *config["pretrained_cfg"]["input_size"])  # another batch size than the export's
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"images": x.numpy()})
    assert np.abs(logits - _logits(run.net, x).numpy()).max() <= ONNX_TOLERANCE


def test_onnx_export_says_one_line(resnet_run, tmp_path, caplog, capfd):
    """What was written, where, and the check's result; not the exporter's ~230 notes of its optimiser passes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    caplog.set_level(logging.INFO)  # what the console shows: export_main logs at INFO
    assert export_main([str(resnet_run), "--format", "onnx", "--out", str(tmp_path)]) == 0
    printed = capfd.readouterr()
    lines = [record.getMessage() for record in caplog.records] + (printed.out + printed.err).splitlines()
    assert len(lines) == 1, "\n".join(lines)
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'model.onnx'))} \(opset \d+\) and config\.json; checked: ONNX Runtime's "
        r"logits are PyTorch's within \S+ \(<= 1e-04\)",
        lines[0],
    )


def test_quieted_onnx_loggers_still_warn(caplog):
    caplog.set_level(logging.INFO)
    levels = [logging.getLogger(name).level for name in ONNX_CHATTY_LOGGERS]
    with quiet_onnx_passes():
        for name in ONNX_CHATTY_LOGGERS:
            logging.getLogger(f"{name}.passes").info("a progress note")
            logging.getLogger(f"{name}.passes").warning("news")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [(f"{n}.passes", "news") for n in ONNX_CHATTY_LOGGERS]
    assert [logging.getLogger(name).level for name in ONNX_CHATTY_LOGGERS] == levels  # restored


class DataDependent(nn.Module):
    """A branch on tensor values: no static graph exists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.mean() > 0 else x - 1


def test_onnx_export_of_a_data_dependent_model_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with pytest.raises(ExportError, match="DataDependent cannot be exported to ONNX.*data-dependent.*torch.where"):
        onnx_export(DataDependent(), torch.randn(2, 3, 4, 4), tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())  # no half-written file left


def test_onnx_without_the_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as when not installed
    with pytest.raises(ExportError, match=r"pip install -e '\.\[onnx\]'"):
        onnx_export(nn.Identity(), torch.randn(1, 3, 4, 4), tmp_path / "model.onnx")


def test_export_needs_a_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        export_main([str(tmp_path), "--format", "safetensors"])
    assert stopped.value.code == 2
    assert re.fullmatch(r"gnr650-export: error: [^\n]*not a run directory[^\n]*\n", capsys.readouterr().err)
