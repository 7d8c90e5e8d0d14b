"""How well a learned variance head fits, step by step: its Σ against the Σ that minimises each step's KL.

Step k of a K-step process contributes KL(q(x_{k-1} | x_k, x_0) || p(x_{k-1} | x_k)) to the VLB, with
q = N(μ̃, β̃ I) and p = N(μ_θ, Σ). Per dimension the KL is ½ (log Σ/β̃ + (β̃ + d²)/Σ − 1) with d = μ̃ − μ_θ;
its derivative in Σ vanishes at Σ* = β̃ + d². So the best isotropic Σ for an image is the posterior
variance plus the model's own squared mean error, averaged over pixels. Written as the learned-range weight
(Nichol & Dhariwal eq. 15, log Σ = frac log β + (1 − frac) log β̃), that is
frac* = (log Σ* − log β̃) / (log β − log β̃), clipped to the head's range [0, 1]. The head's own weight is
frac = (v + 1) / 2. Fixed-small is frac = 0 and fixed-large frac = 1; a well-trained head follows frac*.

Step 0 (the decoder's likelihood, not a Gaussian KL) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.diffusion.coefficients import coefficient_table, gather
from service.diffusion.prediction import predict_xstart_from_eps, q_posterior_mean, q_sample
from service.diffusion.process import SpacedProcess
from service.diffusion.sampling import Denoiser


@dataclass(frozen=True)
class StepFit:
    step: int  # k in the K-step process
    timestep: int  # the training step the network sees for it
    head_frac: float  # mean of (v + 1) / 2 over images and pixels
    optimal_frac: float  # mean over images of the clipped KL-optimal weight


@torch.no_grad()
def variance_fit(
    denoiser: Denoiser,
    process: SpacedProcess,
    x_start: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    steps: Sequence[int] | None = None,
) -> list[StepFit]:
    """One StepFit per step k in `steps` (default: every k >= 1) on the images x_start ([N, C, H, W])."""
    table = coefficient_table(process, x_start.device)
    chosen = list(range(1, process.num_timesteps)) if steps is None else list(steps)
    fits = []
    for k in chosen:
        if not 1 <= k < process.num_timesteps:
            raise ValueError(f"step {k} is outside 1..{process.num_timesteps - 1}")
        c = gather(table, torch.full((len(x_start),), k, dtype=torch.long, device=x_start.device))
        noise = torch.randn(x_start.shape, generator=generator).to(x_start.device)
        x_t = q_sample(x_start, noise, c)
        eps, v = denoiser(x_t, c.model_t, labels)
        if v is None:
            raise ValueError("the model has no learned variance to fit")
        # The sampler's mean: x0 from eps, clipped to the data range, then the posterior mean.
        pred_xstart = predict_xstart_from_eps(x_t, eps, c).clamp(-1, 1)
        error = (q_posterior_mean(x_start, x_t, c) - q_posterior_mean(pred_xstart, x_t, c)).pow(2)
        best_variance = c.posterior_variance.double() + error.flatten(1).mean(dim=1).double()
        low, high = c.posterior_log_variance_clipped.double(), c.log_betas.double()
        optimal = ((best_variance.log() - low) / (high - low)).clamp(0, 1)
        fits.append(
            StepFit(
                step=k,
                timestep=int(process.timestep_map[k]),
                head_frac=float(((v.double() + 1) / 2).mean()),
                optimal_frac=float(optimal.mean()),
            )
        )
    return fits


def evenly_spaced_steps(num_steps: int, count: int) -> list[int]:
    """About `count` steps from 1 to num_steps - 1, both ends included."""
    last = num_steps - 1
    if count < 2:
        raise ValueError(f"count must be >= 2, got {count}")
    if count >= last:
        return list(range(1, num_steps))
    return sorted({1 + round(i * (last - 1) / (count - 1)) for i in range(count)})
