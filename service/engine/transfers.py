"""Every host <-> device copy of an executor's step goes through one Transfers object.

Why: on CUDA `torch.tensor(values, device=cuda)` and `cpu_tensor.to(cuda)` copy from pageable memory
and then wait for the stream, so each per-step index, label or coefficient block was a sync that
stalled the host until the UNet before it had finished. Here uploads are staged in pinned memory and
copied with non_blocking=True (the caching host allocator keeps a pinned block alive until its copy
has run, so the staging tensor may be dropped at once), and everything the host reads back after a step
comes down in one `download`, the step's single synchronisation. On the CPU both are plain tensor moves.

`uploads` and `syncs` count the calls: tests check the sync count per step on the CPU with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Transfers:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self.uploads = 0
        self.syncs = 0

    def upload(self, values: np.ndarray | Sequence[float | None], dtype: torch.dtype) -> torch.Tensor:
        """Host values (a numpy array or a list) as a tensor on the device, without waiting."""
        host = torch.as_tensor(np.asarray(values), dtype=dtype)
        return self.upload_tensor(host)

    def upload_tensor(self, host: torch.Tensor) -> torch.Tensor:
        """A CPU tensor onto the device without waiting (pinned first on CUDA)."""
        self.uploads += 1
        if not self.pinned:
            return host if host.device == self.device else host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def download(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The tensors on the host, after one wait for the device: the step's one synchronisation."""
        self.syncs += 1
        if not self.pinned:
            return [tensor.detach().cpu() for tensor in tensors]
        # non_blocking device -> CPU copies land in pinned memory; one stream sync then covers them all.
        host = [tensor.detach().to("cpu", non_blocking=True) for tensor in tensors]
        torch.cuda.current_stream(self.device).synchronize()
        return host
