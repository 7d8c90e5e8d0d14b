"""One reverse step per row: ancestral DDPM and DDIM. Rows may sit at different t of different K."""

from __future__ import annotations

import torch

from service.diffusion.coefficients import RowCoefficients, per_row
from service.diffusion.prediction import PMeanVariance, predict_eps_from_xstart


def ddpm_step(out: PMeanVariance, noise: torch.Tensor, c: RowCoefficients) -> torch.Tensor:
    """x_{t-1} = mu + 1[t != 0] exp(log Sigma / 2) z (Ho et al. Algorithm 2; noise masked at t = 0)."""
    return out.mean + per_row(c.nonzero_mask, noise) * torch.exp(0.5 * out.log_variance) * noise


def ddim_step(
    x_t: torch.Tensor,
    out: PMeanVariance,
    noise: torch.Tensor,
    c: RowCoefficients,
    eta: torch.Tensor | float,
) -> torch.Tensor:
    """Song et al. 2021 eq. 12 with sigma_t(eta) (eq. 16); eps is re-derived from the clipped x0."""
    eps = predict_eps_from_xstart(x_t, out.pred_xstart, c)
    alpha_bar = per_row(c.alphas_cumprod, x_t)
    alpha_bar_prev = per_row(c.alphas_cumprod_prev, x_t)
    if isinstance(eta, torch.Tensor):
        eta = per_row(eta.to(x_t), x_t)
    sigma = (
        eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    # 1 - alpha_bar_prev - sigma^2 = (1 - alpha_bar_prev) alpha_bar (1/alpha_bar_prev - 1) / (1 - alpha_bar),
    # never negative; but at eta = 1 with alpha_bar_prev within an ulp of 1 the float32 difference cancels
    # to a rounding error that can be a tiny negative number, whose sqrt is NaN (a K = 9 row on the tiny
    # test model, seen on an AMD EPYC). The clamp is the identity wherever the reference's value is finite.
    direction = torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0))
    mean_pred = out.pred_xstart * torch.sqrt(alpha_bar_prev) + direction * eps
    return mean_pred + per_row(c.nonzero_mask, x_t) * sigma * noise
