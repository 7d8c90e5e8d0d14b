"""Which devices serve (one engine per CUDA device, the CPU when there is none) and their memory in use.

The one place a device name from settings or a Triton instance becomes torch devices; the embedded
backend, the Triton worker and the pool all choose through it.
"""

from __future__ import annotations

import os
import resource

import torch


class DeviceError(ValueError):
    """A device setting that cannot be met on this machine; the message says what to change."""


def serving_devices(device: str = "auto") -> list[torch.device]:
    """`auto`: every visible CUDA device, or the CPU; `cpu`; `cuda`: every CUDA device; `cuda:N`: that one."""
    cuda = torch.cuda.is_available()
    if device == "auto":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if cuda else [_cpu()]
    if device == "cpu":
        return [_cpu()]
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda:
            raise DeviceError(f"device {device!r} was asked for but no CUDA device is visible")
        if device == "cuda":
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        index = device.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")
        return [torch.device("cuda", int(index))]
    raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def memory_bytes(device: torch.device) -> int:
    """CUDA memory allocated by torch on the device, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # No /proc: the peak RSS (KiB on Linux-likes) is the best figure the standard library has.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _cpu() -> torch.device:
    return torch.device("cpu")
