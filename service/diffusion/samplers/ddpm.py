"""Ancestral DDPM: Ho et al. 2020 Algorithm 2 with Sigma_theta per Nichol & Dhariwal 2021 section 3.1."""

from __future__ import annotations

import torch

from service.diffusion.coefficients import RowCoefficients, per_row
from service.diffusion.prediction import model_log_variance, p_mean_variance
from service.diffusion.samplers.base import RowOptions, RowState, Sampler, StepOutput
from service.diffusion.steps import ddpm_step


def step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    c: RowCoefficients,
    noise: torch.Tensor,
    options: RowOptions,
    state: RowState,
) -> StepOutput:
    """x_{t-1} = mu_theta + Sigma_theta^(1/2) z, each row with its own variance type."""
    kinds = list(dict.fromkeys(options.variance))
    out = p_mean_variance(eps, v, x_t, c, kinds[0], options.clip_denoised)
    if len(kinds) > 1:  # rows of other variance types: the mean is shared, only Sigma differs
        log_variance = out.log_variance
        for kind in kinds[1:]:
            flags = torch.tensor([vt is kind for vt in options.variance], device=x_t.device)
            log_variance = torch.where(
                per_row(flags, x_t), model_log_variance(kind, v, x_t, c)[1], log_variance
            )
        out = out._replace(variance=torch.exp(log_variance), log_variance=log_variance)
    return StepOutput(ddpm_step(out, noise, c), out.pred_xstart, {})


SAMPLER = Sampler(
    name="ddpm",
    description="ancestral sampling with the model's variance (learned, or a fixed one by `variance`)",
    step=step,
    uses_variance=True,
)
