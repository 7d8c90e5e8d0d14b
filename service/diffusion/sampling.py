"""Reverse-process loops over a batch whose rows may each run their own K (and their own sampler).

Iteration: every active row takes one step at its own respaced index (K_i - 1 down to 0); one network
call serves all of them. A row with K = 5 finishes after 5 iterations while a K = 50 row goes on.
The step itself is the sampler's (service.diffusion.samplers); this module only drives the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from service.diffusion.coefficients import coefficient_table, gather, stack_tables
from service.diffusion.config import VarianceType
from service.diffusion.noise import NoiseSource
from service.diffusion.process import SpacedProcess
from service.diffusion.samplers import RowOptions, get_sampler
from service.diffusion.samplers.mixed import mixed_step


class Denoiser(Protocol):
    """The network seen by the math: (x_t, model timestep [B], labels) -> (eps, v or None)."""

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def sample_rows(
    denoise: Denoiser,
    processes: Sequence[SpacedProcess],
    x_T: torch.Tensor,
    noise: NoiseSource,
    y: torch.Tensor | None = None,
    sampler: str | Sequence[str] = "ddpm",
    variance_type: VarianceType = VarianceType.LEARNED_RANGE,
    eta: torch.Tensor | float = 0.0,
    clip_denoised: bool = True,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
    gamma: np.ndarray | None = None,
) -> torch.Tensor:
    """Sample every row of x_T with its own process (its own K); returns x_0 for all rows.

    `sampler` is one name for every row or one per row; each row's process must be the one its
    sampler's schedule gives for its K. on_iteration(i, x) is called after each shared iteration
    (progress bars, trajectories). `gamma` (the model's Gamma_t) is needed for analytic variance only.
    """
    n = len(processes)
    names = [sampler] * n if isinstance(sampler, str) else list(sampler)
    samplers = [get_sampler(name) for name in names]
    unique = list({id(p): p for p in processes}.values())
    table, offsets = stack_tables([coefficient_table(p, x_T.device, gamma) for p in unique])
    offset_of = {id(p): o for p, o in zip(unique, offsets, strict=True)}
    cursor = [p.num_timesteps - 1 for p in processes]
    draws = [0] * n
    x = x_T.clone()
    state = {key: torch.zeros_like(x) for s in samplers for key in s.state}
    eta_rows = eta if isinstance(eta, torch.Tensor) else torch.full((n,), float(eta))
    iteration = 0
    while any(k >= 0 for k in cursor):
        active = [i for i, k in enumerate(cursor) if k >= 0]
        idx = torch.tensor(active, device=x.device)
        rows = torch.tensor([offset_of[id(processes[i])] + cursor[i] for i in active], device=x.device)
        z = noise.draw(active, [draws[i] for i in active], x[idx])
        c = gather(table, rows)
        eps, v = denoise(x[idx], c.model_t, None if y is None else y[idx])
        options = RowOptions(eta_rows[active].to(x.device), (variance_type,) * len(active), clip_denoised)
        out = mixed_step(
            [samplers[i] for i in active],
            x[idx],
            eps.float(),
            None if v is None else v.float(),
            c,
            z,
            options,
            {key: tensor[idx] for key, tensor in state.items()},
        )
        x[idx] = out.x_prev
        for key, tensor in out.state.items():
            state[key][idx] = tensor
        for i in active:
            cursor[i] -= 1
            draws[i] += 1
        if on_iteration is not None:
            on_iteration(iteration, x)
        iteration += 1
    return x
