"""From the network's (eps, v) to p(x_{t-1} | x_t): x0 prediction, posterior mean, Sigma_theta.

Equations: x0 = sqrt(1/alpha_bar_t) x_t - sqrt(1/alpha_bar_t - 1) eps (Ho et al. eq. 11 rearranged);
mu~(x_t, x0) (Ho et al. eq. 7); learned-range variance log Sigma = v log beta_t + (1 - v) log beta~_t
(Nichol & Dhariwal eq. 15, with the network's raw output mapped to v = (out + 1) / 2 and NOT clamped).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from service.diffusion.coefficients import RowCoefficients, per_row
from service.diffusion.config import VarianceType


class PMeanVariance(NamedTuple):
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


def q_sample(x_start: torch.Tensor, noise: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Ho et al. eq. 4)."""
    return (
        per_row(c.sqrt_alphas_cumprod, x_start) * x_start
        + per_row(c.sqrt_one_minus_alphas_cumprod, x_start) * noise
    )


def predict_xstart_from_eps(x_t: torch.Tensor, eps: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    return per_row(c.sqrt_recip_alphas_cumprod, x_t) * x_t - per_row(c.sqrt_recipm1_alphas_cumprod, x_t) * eps


def predict_eps_from_xstart(x_t: torch.Tensor, pred_xstart: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    return (per_row(c.sqrt_recip_alphas_cumprod, x_t) * x_t - pred_xstart) / per_row(
        c.sqrt_recipm1_alphas_cumprod, x_t
    )


def q_posterior_mean(x_start: torch.Tensor, x_t: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    """mu~_t(x_t, x_0) = coef1 x_0 + coef2 x_t (Ho et al. eq. 7)."""
    return per_row(c.posterior_mean_coef1, x_t) * x_start + per_row(c.posterior_mean_coef2, x_t) * x_t


def learned_range_log_variance(v: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    """Nichol & Dhariwal eq. 15; frac may leave [0, 1], as in the reference (no clamp)."""
    min_log = per_row(c.posterior_log_variance_clipped, v)
    max_log = per_row(c.log_betas, v)
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def model_log_variance(
    variance_type: VarianceType, v: torch.Tensor | None, like: torch.Tensor, c: RowCoefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Sigma, log Sigma) per element for the chosen variance type."""
    if variance_type is VarianceType.LEARNED_RANGE:
        if v is None:
            raise ValueError("learned-range variance needs the model's variance output v")
        log_variance = learned_range_log_variance(v, c)
        return torch.exp(log_variance), log_variance
    if variance_type is VarianceType.FIXED_LARGE:
        variance, log_variance = c.fixed_large_variance, c.fixed_large_log_variance
    elif variance_type is VarianceType.ANALYTIC:
        variance, log_variance = c.analytic_variance, c.analytic_log_variance
    else:
        variance, log_variance = c.posterior_variance, c.posterior_log_variance_clipped
    return per_row(variance, like).expand_as(like), per_row(log_variance, like).expand_as(like)


def p_mean_variance(
    eps: torch.Tensor,
    v: torch.Tensor | None,
    x_t: torch.Tensor,
    c: RowCoefficients,
    variance_type: VarianceType,
    clip_denoised: bool = True,
) -> PMeanVariance:
    """Mean and variance of p_theta(x_{t-1} | x_t); the mean uses the clipped x0 when clip_denoised."""
    variance, log_variance = model_log_variance(variance_type, v, x_t, c)
    pred_xstart = predict_xstart_from_eps(x_t, eps, c)
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean = q_posterior_mean(pred_xstart, x_t, c)
    return PMeanVariance(mean, variance, log_variance, pred_xstart)
