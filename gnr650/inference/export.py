"""Export a finished run's network: safetensors + config.json in timm's form (``timm.create_model`` rebuilds it
with the same logits), or ONNX checked against ONNX Runtime. Both folders hold the same config.json (classes,
normalisation, input size)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch import nn

from gnr650.errors import UserError
from gnr650.files import atomic_write
from gnr650.finetune.lora import has_lora, merge_lora
from gnr650.finetune.vpt import PromptedBlocks
from gnr650.inference.trained_run import TrainedRun

ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4
# Loggers of torch.onnx's optimiser passes: at INFO they narrate every step (a ViT-Ti: ~230 lines, mostly
# "Replaced initializer ..."); their warnings and errors still show.
ONNX_CHATTY_LOGGERS = ("onnx_ir", "onnxscript")
# timm architectures for the project's non-timm builders (the same module names, so state dicts load strictly).
TIMM_EQUIVALENTS = {"gnr650.models.build_resnet18": "resnet18"}


class ExportError(RuntimeError, UserError):
    """The network cannot be exported in the asked format; the message says why and what to do instead."""


def _built_by_timm(net: nn.Module) -> bool:
    return getattr(net, "pretrained_cfg", None) is not None


def timm_network(run: TrainedRun) -> nn.Module:
    """The run's network as a timm model: itself when built by timm (LoRA adapters merged into their layers),
    else its timm equivalent loaded strictly with its weights and checked to give the same logits."""
    if any(isinstance(m, PromptedBlocks) for m in run.net.modules()):
        raise ExportError(
            "The run's network holds VPT prompt tokens, which timm's VisionTransformer has no place for; "
            "use --format onnx."
        )
    if _built_by_timm(run.net):
        return merge_lora(copy.deepcopy(run.net)) if has_lora(run.net) else run.net
    target = run.config.model.get("_target_")
    arch = TIMM_EQUIVALENTS.get(target)
    if arch is None:
        raise ExportError(f"No timm architecture is known for models built by {target}; use --format onnx.")
    net = timm.create_model(arch, pretrained=False, num_classes=len(run.class_names)).eval()
    try:
        net.load_state_dict(run.net.state_dict())
    except RuntimeError as e:
        raise ExportError(
            f"The run's {run.built.name} does not fit timm's '{arch}' ({str(e).splitlines()[1].strip()}): "
            "e.g. model.stem=cifar has no timm equivalent. Use --format onnx."
        ) from e
    x = torch.randn(2, 3, *run.results["preprocess"]["input_size"])
    with torch.no_grad():
        if not torch.allclose(net(x), run.net(x), atol=1e-5):
            raise ExportError(f"timm's '{arch}' computes other logits than the run's {run.built.name}; use onnx.")
    return net


def _config_args(run: TrainedRun) -> dict:
    spec = run.results["preprocess"]
    return {
        "model_config": {"label_names": run.class_names},
        # What DevicePreprocess does: a bilinear resize of the whole image to input_size, then this normalisation.
        "data_config": {
            "input_size": (3, *spec["input_size"]),
            "mean": tuple(spec["mean"]),
            "std": tuple(spec["std"]),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
    }


def export_safetensors(run: TrainedRun, out: Path) -> Path:
    """``<out>/model.safetensors`` and ``<out>/config.json`` (timm's hub format: architecture, num_classes,
    label_names, model_args, pretrained_cfg with mean, std, input_size), what timm's ``save_for_hf`` writes but
    through ``atomic_write`` (its safetensors file would be private, 0o600)."""
    net = timm_network(run)
    path = atomic_write(out / "model.safetensors", lambda tmp: save_file(net.state_dict(), tmp))
    _write_config(net, run, out)
    return path


def _write_config(net: nn.Module, run: TrainedRun, out: Path) -> None:
    atomic_write(out / "config.json", lambda tmp: save_config_for_hf(net, tmp, **_config_args(run)))


def export_onnx(run: TrainedRun, out: Path, opset: int = ONNX_OPSET) -> tuple[Path, float]:
    """``<out>/model.onnx`` (input ``images``: normalised float [batch, 3, H, W]; output ``logits``) and
    config.json; returns the path and the largest ONNX Runtime vs PyTorch difference on a batch."""
    height, width = run.results["preprocess"]["input_size"]
    path = out / "model.onnx"
    diff = onnx_export(run.net, torch.randn(2, 3, height, width), path, opset)
    out.mkdir(parents=True, exist_ok=True)
    # config.json describes the classes, normalisation and input size; a timm-built network (prompts and all)
    # describes itself.
    _write_config(run.net if _built_by_timm(run.net) else timm_network(run), run, out)
    return path, diff


@contextmanager
def quiet_onnx_passes() -> Iterator[None]:
    """Hold ``ONNX_CHATTY_LOGGERS`` at WARNING (their INFO lines are progress notes, not news), then restore."""
    loggers = [logging.getLogger(name) for name in ONNX_CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def onnx_export(net: nn.Module, example: torch.Tensor, path: Path, opset: int = ONNX_OPSET) -> float:
    """Export with ``torch.onnx`` (torch.export, dynamic batch) into one file, then run a batch of another size
    through ONNX Runtime: more than ``ONNX_TOLERANCE`` from PyTorch is an error. A part of the network whose
    flow depends on the input values cannot be exported (it would be frozen to one path): an error too."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ExportError(f"ONNX export needs the 'onnx' extra ({e}): pip install -e '.[onnx]'.") from e
    net = net.eval()

    def write(tmp: str) -> None:
        try:
            with quiet_onnx_passes():
                torch.onnx.export(
                    net,
                    (example,),
                    tmp,
                    dynamo=True,
                    opset_version=opset,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    external_data=False,
                    verbose=False,
                )
        except Exception as e:
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise ExportError(
                f"{type(net).__name__} cannot be exported to ONNX: torch.export failed ({type(cause).__name__}: "
                f"{str(cause).strip().splitlines()[0]}). "
                "A part whose control flow depends on the input values (a Python if/loop on tensor data) has no "
                "static graph; rewrite it with torch.where / torch.cond, or export --format safetensors."
            ) from e

    atomic_write(path, write)
    batch = torch.randn(example.shape[0] + 3, *example.shape[1:])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(batch).float().numpy()
    diff = float(abs(session.run(None, {"images": batch.numpy()})[0] - expected).max())
    if diff > ONNX_TOLERANCE:
        path.unlink()
        raise ExportError(f"ONNX Runtime's logits differ from PyTorch's by {diff:.2e} (> {ONNX_TOLERANCE}).")
    return diff
