"""``trainer.precision: auto``: bf16 mixed precision where the hardware runs bf16 matrix products faster.

The CPU rule follows measurements on a 2-core Xeon with AMX (docs/benchmarks.md, "bf16 and torch.compile on the
CPU"): bf16 autocast ran ViT-Ti/16 at 224 px 1.98x the fp32 training and 2.43x the evaluation images/s, but
ResNet-18 at 32 px (study 1) 0.91x and 0.89x: its small convolutions gain less than the casts cost. So on such a CPU
``auto`` is bf16 for networks whose weights are mostly outside convolutions (transformers), fp32 for conv nets
(not measured at larger inputs, where they may gain). Without AMX tiles bf16 was not measured: fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from gnr650.training.device import conv_dominated, on_gpu

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


def resolve_precision(requested: str | int, accelerator: str, net: nn.Module | None = None) -> tuple[str, str]:
    """The precision Lightning gets for ``trainer.precision=requested``, and why (for the log and results.json).
    ``auto`` on a CPU needs the network (``net``)."""
    if str(requested) != AUTO:
        return str(requested), "trainer.precision as configured"
    if on_gpu(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return BF16, "auto: this GPU computes in bf16"
        return FP32, "auto: no GPU with bf16 support found, fp32"
    if not cpu_has_amx_bf16():
        return FP32, "auto: this CPU has no AMX bf16 matrix units, where bf16 was not measured to pay; fp32"
    if net is None:
        raise ValueError("trainer.precision=auto on a CPU is decided per network: pass net.")
    if conv_dominated(net):
        return FP32, (
            "auto: a conv net on the CPU (ResNet-18 at 32 px measured 0.91x training, 0.89x evaluation images/s in "
            "bf16 on AMX; docs/benchmarks.md), fp32"
        )
    return BF16, (
        "auto: this CPU has AMX bf16 matrix units (ViT-Ti/16 at 224 px measured 1.98x training, 2.43x evaluation "
        "images/s; docs/benchmarks.md)"
    )


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast a hand-written loop needs to compute as Lightning does at ``precision`` (benchmarks)."""
    if precision in (FP32, "32"):
        return nullcontext()
    if precision == BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"The plain loop runs trainer.precision 32-true or bf16-mixed (got {precision}).")
