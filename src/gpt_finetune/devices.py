"""Where a command runs: "auto" device resolution and peak memory, for every command and benchmark."""

from __future__ import annotations

import resource

import torch

from gpt_finetune.errors import UserError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when available, else the CPU; any other name (`cpu`, `cuda`, `cuda:1`) as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use device=auto, cpu, cuda or cuda:N") from None


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process, or its peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()
