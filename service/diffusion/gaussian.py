"""Gaussian helpers for the variational bound (Ho et al. 2020 section 3.3; Nichol & Dhariwal eq. 4-6)."""

from __future__ import annotations

import math

import torch


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    lv1 = torch.as_tensor(logvar1).to(tensor)
    lv2 = torch.as_tensor(logvar2).to(tensor)
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + ((mean1 - mean2) ** 2) * torch.exp(-lv2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of Phi(x) used by the reference decoder."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x_0 | x_1) for 8-bit data in [-1, 1]: Gaussian mass of the bin of half-width 1/255.

    The edge bins extend to -inf / +inf (Ho et al. eq. 13); log arguments are clamped at 1e-12.
    """
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=list(range(1, x.dim())))
