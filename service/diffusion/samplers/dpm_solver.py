"""DPM-Solver++(2M): a second-order multistep solver on the data prediction (service.diffusion.multistep).

The variance output is not used. The x0 prediction is clipped to [-1, 1] like every other sampler's
(options.clip_denoised); the row keeps its previous x0 prediction as state for the next step.
"""

from __future__ import annotations

import torch

from service.diffusion.coefficients import RowCoefficients, per_row
from service.diffusion.multistep import dpm_solver_process
from service.diffusion.prediction import predict_xstart_from_eps
from service.diffusion.samplers.base import RowOptions, RowState, Sampler, StepOutput


def step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    c: RowCoefficients,
    noise: torch.Tensor,
    options: RowOptions,
    state: RowState,
) -> StepOutput:
    """x_next = dpm_x_coef x_t + dpm_x0_coef (w_cur D + w_prev D_prev); the first step has w_prev = 0."""
    x0 = predict_xstart_from_eps(x_t, eps, c)
    if options.clip_denoised:
        x0 = x0.clamp(-1, 1)
    d = per_row(c.dpm_w_cur, x_t) * x0 + per_row(c.dpm_w_prev, x_t) * state["prev_x0"]
    x_next = per_row(c.dpm_x_coef, x_t) * x_t + per_row(c.dpm_x0_coef, x_t) * d
    return StepOutput(x_next, x0, {"prev_x0": x0})


SAMPLER = Sampler(
    name="dpm++2m",
    description="DPM-Solver++(2M), deterministic, its own timesteps; best at few steps",
    step=step,
    state=("prev_x0",),
    schedule=dpm_solver_process,
    schedule_name="dpm-solver",
)
