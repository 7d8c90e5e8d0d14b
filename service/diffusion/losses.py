"""Training objectives: L_simple (Ho et al. eq. 14), L_vlb terms (eq. 5), L_hybrid (Nichol & Dhariwal eq. 16).

As in the reference, the VLB term uses the network's eps with gradients stopped and only its v
trainable ("stop-gradient on mu", paper section 3.1), and is reported in bits per dimension.
"""

from __future__ import annotations

import math

import torch

from service.diffusion.coefficients import RowCoefficients, gather
from service.diffusion.config import LossType, VarianceType
from service.diffusion.gaussian import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from service.diffusion.prediction import p_mean_variance, q_posterior_mean, q_sample
from service.diffusion.sampling import Denoiser


def vb_terms_bpd(
    eps: torch.Tensor,
    v: torch.Tensor | None,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    c: RowCoefficients,
    variance_type: VarianceType,
    clip_denoised: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_t in bits/dim [B], predicted x0): KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, decoder NLL at t = 0."""
    true_mean = q_posterior_mean(x_start, x_t, c)
    true_log_variance = c.posterior_log_variance_clipped.view(-1, *([1] * (x_t.dim() - 1)))
    out = p_mean_variance(eps, v, x_t, c, variance_type, clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance)) / math.log(2.0)
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, means=out.mean, log_scales=0.5 * out.log_variance
    )
    decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
    return torch.where(c.nonzero_mask == 0, decoder_nll, kl), out.pred_xstart


def training_losses(
    denoise: Denoiser,
    table: torch.Tensor,
    x_start: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    loss_type: LossType,
    variance_type: VarianceType,
    y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample loss terms at steps t ([B] int64 rows of `table`, the un-respaced process's table).

    Keys: "loss" always; "mse" and "vb" for the MSE losses (vb only with learned variance).
    RESCALED_MSE scales vb by T/1000: lambda = 0.001 on L_vlb = T * E_t[L_t] (paper section 3.1).
    """
    num_timesteps = table.shape[0]
    c = gather(table, t)
    x_t = q_sample(x_start, noise, c)
    eps, v = denoise(x_t, c.model_t, y)
    if loss_type in (LossType.KL, LossType.RESCALED_KL):
        vb, _ = vb_terms_bpd(eps, v, x_start, x_t, c, variance_type, clip_denoised=False)
        return {"loss": vb * num_timesteps if loss_type is LossType.RESCALED_KL else vb}
    terms: dict[str, torch.Tensor] = {}
    if variance_type is VarianceType.LEARNED_RANGE:
        vb, _ = vb_terms_bpd(eps.detach(), v, x_start, x_t, c, variance_type, clip_denoised=False)
        terms["vb"] = vb * (num_timesteps / 1000.0) if loss_type is LossType.RESCALED_MSE else vb
    terms["mse"] = mean_flat((noise - eps) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
