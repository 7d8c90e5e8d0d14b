"""Reverse-process loops over a batch whose rows may each run their own K.

Iteration: every active row takes one step at its own respaced index (K_i - 1 down to 0); one network
call serves all of them. A row with K = 5 finishes after 5 iterations while a K = 50 row goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

import torch

from service.diffusion.coefficients import coefficient_table, gather, stack_tables
from service.diffusion.config import VarianceType
from service.diffusion.noise import NoiseSource
from service.diffusion.prediction import p_mean_variance
from service.diffusion.process import SpacedProcess
from service.diffusion.steps import ddim_step, ddpm_step


class Sampler(StrEnum):
    DDPM = "ddpm"
    DDIM = "ddim"


class Denoiser(Protocol):
    """The network seen by the math: (x_t, model timestep [B], labels) -> (eps, v or None)."""

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def reverse_step(
    denoise: Denoiser,
    x_t: torch.Tensor,
    rows: torch.Tensor,
    table: torch.Tensor,
    y: torch.Tensor | None,
    noise: torch.Tensor,
    sampler: Sampler,
    variance_type: VarianceType,
    eta: torch.Tensor | float = 0.0,
    clip_denoised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every row of x_t; `rows` index the (stacked) coefficient table. Returns (x, x0)."""
    c = gather(table, rows)
    eps, v = denoise(x_t, c.model_t, y)
    out = p_mean_variance(eps.float(), None if v is None else v.float(), x_t, c, variance_type, clip_denoised)
    if sampler is Sampler.DDIM:
        return ddim_step(x_t, out, noise, c, eta), out.pred_xstart
    return ddpm_step(out, noise, c), out.pred_xstart


def sample_rows(
    denoise: Denoiser,
    processes: Sequence[SpacedProcess],
    x_T: torch.Tensor,
    noise: NoiseSource,
    y: torch.Tensor | None = None,
    sampler: Sampler | str = Sampler.DDPM,
    variance_type: VarianceType = VarianceType.LEARNED_RANGE,
    eta: torch.Tensor | float = 0.0,
    clip_denoised: bool = True,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample every row of x_T with its own process (its own K); returns x_0 for all rows.

    on_iteration(i, x) is called after each shared iteration (progress bars, trajectories).
    """
    sampler = Sampler(sampler)
    unique = list({id(p): p for p in processes}.values())
    table, offsets = stack_tables([coefficient_table(p, x_T.device) for p in unique])
    offset_of = {id(p): o for p, o in zip(unique, offsets, strict=True)}
    cursor = [p.num_timesteps - 1 for p in processes]
    draws = [0] * len(processes)
    x = x_T.clone()
    eta_rows = eta if isinstance(eta, torch.Tensor) else torch.full((len(processes),), float(eta))
    iteration = 0
    while any(k >= 0 for k in cursor):
        active = [i for i, k in enumerate(cursor) if k >= 0]
        idx = torch.tensor(active, device=x.device)
        rows = torch.tensor([offset_of[id(processes[i])] + cursor[i] for i in active], device=x.device)
        z = noise.draw(active, [draws[i] for i in active], x[idx])
        x_next, _ = reverse_step(
            denoise,
            x[idx],
            rows,
            table,
            None if y is None else y[idx],
            z,
            sampler,
            variance_type,
            eta_rows[active].to(x.device) if sampler is Sampler.DDIM else 0.0,
            clip_denoised,
        )
        x[idx] = x_next
        for i in active:
            cursor[i] -= 1
            draws[i] += 1
        if on_iteration is not None:
            on_iteration(iteration, x)
        iteration += 1
    return x
