"""Negative log-likelihood in bits/dim through the full VLB of a K-step process (Ho et al. eq. 5)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from service.diffusion.coefficients import gather
from service.diffusion.config import VarianceType
from service.diffusion.gaussian import mean_flat, normal_kl
from service.diffusion.losses import vb_terms_bpd
from service.diffusion.prediction import predict_eps_from_xstart, q_sample
from service.diffusion.sampling import Denoiser


class BitsPerDim(NamedTuple):
    total_bpd: torch.Tensor  # [B]
    prior_bpd: torch.Tensor  # [B]
    vb: torch.Tensor  # [B, K]; column j is step t = K - 1 - j (the loop runs from high t to low t)
    xstart_mse: torch.Tensor  # [B, K]
    mse: torch.Tensor  # [B, K]


def prior_bpd(x_start: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dim: L_T, constant in the model."""
    last = torch.full((x_start.shape[0],), table.shape[0] - 1, dtype=torch.long, device=x_start.device)
    c = gather(table, last)
    mean = c.sqrt_alphas_cumprod.view(-1, 1, 1, 1) * x_start
    log_variance = c.log_one_minus_alphas_cumprod.view(-1, 1, 1, 1).expand_as(x_start)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


@torch.no_grad()
def calc_bpd_loop(
    denoise: Denoiser,
    table: torch.Tensor,
    x_start: torch.Tensor,
    draw_noise: Callable[[int], torch.Tensor],
    variance_type: VarianceType,
    y: torch.Tensor | None = None,
    clip_denoised: bool = True,
) -> BitsPerDim:
    """Every term L_{K-1} ... L_0 of the bound plus the prior; draw_noise(i) is the i-th draw."""
    num_steps = table.shape[0]
    vb, xstart_mse, mse = [], [], []
    for i, t in enumerate(range(num_steps - 1, -1, -1)):
        rows = torch.full((x_start.shape[0],), t, dtype=torch.long, device=x_start.device)
        c = gather(table, rows)
        noise = draw_noise(i)
        x_t = q_sample(x_start, noise, c)
        eps, v = denoise(x_t, c.model_t, y)
        terms, pred_xstart = vb_terms_bpd(eps, v, x_start, x_t, c, variance_type, clip_denoised)
        vb.append(terms)
        xstart_mse.append(mean_flat((pred_xstart - x_start) ** 2))
        mse.append(mean_flat((predict_eps_from_xstart(x_t, pred_xstart, c) - noise) ** 2))
    prior = prior_bpd(x_start, table)
    vb_t = torch.stack(vb, dim=1)
    return BitsPerDim(vb_t.sum(dim=1) + prior, prior, vb_t, torch.stack(xstart_mse, 1), torch.stack(mse, 1))
