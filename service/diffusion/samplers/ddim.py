"""DDIM: Song et al. 2021 eq. 12, with sigma_t(eta) of eq. 16 (eta = 0: deterministic)."""

from __future__ import annotations

import torch

from service.diffusion.coefficients import RowCoefficients
from service.diffusion.prediction import p_mean_variance
from service.diffusion.samplers.base import RowOptions, RowState, Sampler, StepOutput
from service.diffusion.steps import ddim_step


def step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    c: RowCoefficients,
    noise: torch.Tensor,
    options: RowOptions,
    state: RowState,
) -> StepOutput:
    """x_{t-1} from the clipped x0 and the eps re-derived from it (the variance output is unused)."""
    # The variance type only changes Sigma, which DDIM does not use: any type gives the same x0.
    out = p_mean_variance(eps, v, x_t, c, options.variance[0], options.clip_denoised)
    return StepOutput(ddim_step(x_t, out, noise, c, options.eta), out.pred_xstart, {})


SAMPLER = Sampler(
    name="ddim",
    description="DDIM; `eta` scales its noise (0: deterministic)",
    step=step,
    uses_eta=True,
)
