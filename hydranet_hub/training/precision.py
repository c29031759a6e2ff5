"""Mixed precision: choosing the autocast dtype and building the autocast context and grad scaler."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch


def resolve_amp(request: str, device: torch.device) -> str:
    """Choose the autocast mode for a device.

    Args:
        request: "auto", "none", "bf16" or "fp16".
        device: Training device.

    Returns:
        "none", "bf16" or "fp16". "auto" gives bf16 on CUDA devices that support it, fp16 on
        older CUDA devices, and none on CPU (CPU bf16 autocast is slower than float32 on CPUs
        without AMX or AVX512-BF16).

    Raises:
        ValueError: For fp16 on CPU, which has no loss-scaling support here.
    """
    if request == "auto":
        if device.type != "cuda":
            return "none"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if request == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp none.")
    return request


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """Return a zero-argument factory of the autocast context for `amp` ("none" gives a no-op)."""
    if amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Build a gradient scaler, enabled only for fp16 (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
