"""Choosing the device and dtype: CUDA with fp16 when present, else the CPU with fp32."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA when it is available; an explicit CUDA request without CUDA is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this machine has no CUDA device; use --device cpu")
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the models are trained for it), fp32 on the CPU (fp16 matmuls there are slow or missing)."""
    return torch.float16 if device.type == "cuda" else torch.float32
