"""Device peak throughput for MFU (dense bf16 tensor-core FLOP/s from the vendors' datasheets)."""

from __future__ import annotations

import torch

# Substring of torch.cuda.get_device_name() -> dense bf16 peak FLOP/s.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device, or None (CPU, unknown GPU: MFU is then not logged)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)
