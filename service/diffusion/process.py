"""A (possibly respaced) Gaussian diffusion process as float64 arrays indexed by respaced step k.

Respacing (paper section 4): keeping steps tau_0 < ... < tau_{K-1} of the T-step process defines a new
process with beta'_k = 1 - alpha_bar[tau_k] / alpha_bar[tau_{k-1}] (alpha_bar[tau_{-1}] = 1). Every other
array (posterior, clipped log-variance, learned-range bounds) is recomputed from beta', in float64 and in
the reference's order of operations, so that the float32 coefficients equal the reference's bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.diffusion.config import DiffusionConfig
from service.diffusion.respacing import respaced_timesteps
from service.diffusion.schedules import named_betas


@dataclass(frozen=True, eq=False)
class SpacedProcess:
    """The K-step process a sampler runs; `timestep_map[k]` is the training step the model sees."""

    betas: np.ndarray
    timestep_map: np.ndarray
    original_num_steps: int
    rescale_timesteps: bool

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @cached_property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas, axis=0)

    @cached_property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @cached_property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @cached_property
    def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    @cached_property
    def log_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.log(1.0 - self.alphas_cumprod)

    @cached_property
    def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod)

    @cached_property
    def sqrt_recipm1_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod - 1)

    @cached_property
    def posterior_variance(self) -> np.ndarray:
        """beta~_t of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log beta~_t with entry 0 (where beta~_0 = 0) replaced by entry 1."""
        if self.num_timesteps == 1:
            return np.log(np.maximum(self.posterior_variance, 1e-20))
        return np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))

    @cached_property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

    @cached_property
    def log_betas(self) -> np.ndarray:
        """Upper bound of the learned-range interpolation (paper eq. 15)."""
        return np.log(self.betas)

    @cached_property
    def fixed_large_variance(self) -> np.ndarray:
        """sigma_t^2 = beta_t, with beta~_1 at t = 0 for a better decoder log-likelihood (reference)."""
        if self.num_timesteps == 1:
            return self.betas.copy()
        return np.append(self.posterior_variance[1], self.betas[1:])

    @cached_property
    def fixed_large_log_variance(self) -> np.ndarray:
        return np.log(self.fixed_large_variance)

    @cached_property
    def model_timesteps(self) -> np.ndarray:
        """What the network receives for step k: tau_k, or tau_k * 1000 / T_original as float32.

        The reference rescales with the ORIGINAL T even after respacing; models trained with
        rescale_timesteps=True (CIFAR-10, ImageNet-64 uncond) see floats in [0, 999.75].
        """
        t = self.timestep_map.astype(np.float32)
        if self.rescale_timesteps:
            t = t * np.float32(1000.0 / self.original_num_steps)
        return t.astype(np.float32)


def spaced_process(config: DiffusionConfig, respacing: str | int | None = None) -> SpacedProcess:
    """The respaced process of a model's diffusion settings; None keeps all T steps.

    Even with every step kept, betas are recomputed from alpha_bar as the reference's factories do
    (they always build a respaced process); this differs from the
    schedule's own betas (tests/golden.py base_process) in the last bits.
    """
    return process_at(config, respaced_timesteps(config.num_timesteps, respacing))


def process_at(config: DiffusionConfig, kept: Sequence[int]) -> SpacedProcess:
    """The process that visits exactly the training steps `kept` (any strictly increasing subset of
    0..T-1): how respacing builds its process, and how samplers with their own timestep choice do."""
    base = named_betas(config.noise_schedule, config.num_timesteps)
    base_alphas_cumprod = np.cumprod(1.0 - base, axis=0)
    kept_set = set(kept)
    new_betas = []
    last = 1.0
    for i, alpha_cumprod in enumerate(base_alphas_cumprod):
        if i in kept_set:
            new_betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
    return SpacedProcess(
        betas=np.array(new_betas, dtype=np.float64),
        timestep_map=np.array(sorted(kept_set), dtype=np.int64),
        original_num_steps=config.num_timesteps,
        rescale_timesteps=config.rescale_timesteps,
    )
