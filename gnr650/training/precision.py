"""``trainer.precision: auto``: bf16 mixed precision where the hardware runs bf16 matrix products faster.

The CPU rule follows measurements on a 2-core Xeon with AMX (docs/benchmarks.md, "bf16 on the CPU"): bf16
autocast ran ViT-Ti/16 training 1.8x and evaluation 2.5x the fp32 images/s at 224 px, ResNet-18 at 32 px 1.2x.
Without AMX tiles the bf16 speed-up was not measured, so ``auto`` stays at fp32 there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from gnr650.training.device import on_gpu

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"


def cpu_has_amx_bf16() -> bool:
    """The CPU has AMX tiles with bf16 (``amx_bf16``), which oneDNN uses for bf16 matrix products."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x; /proc/cpuinfo otherwise
    if probe is not None:
        return bool(probe())
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and "amx_bf16" in cpuinfo.read_text().split()


def resolve_precision(requested: str | int, accelerator: str) -> tuple[str, str]:
    """The precision Lightning gets for ``trainer.precision=requested``, and why (for the log and results.json)."""
    if str(requested) != AUTO:
        return str(requested), "trainer.precision as configured"
    if on_gpu(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return BF16, "auto: this GPU computes in bf16"
        return FP32, "auto: no GPU with bf16 support found, fp32"
    if cpu_has_amx_bf16():
        return BF16, (
            "auto: this CPU has AMX bf16 matrix units (measured 1.8x training, 2.5x evaluation images/s for "
            "ViT-Ti/16 at 224 px; docs/benchmarks.md)"
        )
    return FP32, "auto: this CPU has no AMX bf16 matrix units, where bf16 was not measured to pay; fp32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast a hand-written loop needs to compute as Lightning does at ``precision`` (benchmarks)."""
    if precision in ("32-true", "32"):
        return nullcontext()
    if precision == BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"The plain loop runs trainer.precision 32-true or bf16-mixed (got {precision}).")
