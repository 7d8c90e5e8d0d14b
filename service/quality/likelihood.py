"""NLL of held-out images in bits/dim through the VLB of the K-step process (paper section 4, Table 2)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.diffusion.bpd import calc_bpd_loop
from service.diffusion.coefficients import coefficient_table
from service.diffusion.process import spaced_process
from service.model.store import LoadedModel


@torch.no_grad()
def test_bpd(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    steps: int,
    seed: int = 0,
    batch_size: int = 250,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean total bits/dim of `images` ([-1, 1], 8-bit quantised) under the model respaced to K steps."""
    device = next(model.net.parameters()).device
    table = coefficient_table(spaced_process(model.manifest.diffusion, steps), device)
    generator = torch.Generator().manual_seed(seed)
    totals = []
    for start in range(0, len(images), batch_size):
        x_start = images[start : start + batch_size].to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)

        def draw(i: int, like: torch.Tensor = x_start) -> torch.Tensor:
            return torch.randn(like.shape, generator=generator).to(device)

        result = calc_bpd_loop(
            model.denoiser, table, x_start, draw, model.manifest.diffusion.variance_type, y=y
        )
        totals.append(result.total_bpd.cpu())
        if on_batch is not None:
            on_batch(len(x_start))
    return float(torch.cat(totals).double().mean())
