"""Beta schedules beta_1..beta_T in float64 (Ho et al. 2020 linear; Nichol & Dhariwal 2021 eq. 17 cosine)."""

from __future__ import annotations

import functools
import math

import numpy as np

from service.diffusion.config import NoiseSchedule

MAX_BETA = 0.999  # paper section 3.2: clip beta_t to prevent singularities near t = T


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s 1e-4..0.02 over 1000 steps, rescaled so any T spans the same noise range."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(s: float) -> float:
    """alpha_bar(s) = f(s)/f(0) up to normalisation, s = t/T in [0, 1] (eq. 17, offset 0.008)."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int) -> np.ndarray:
    """beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), 0.999) (paper section 3.2)."""
    betas = [
        min(1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps), MAX_BETA)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def named_betas(schedule: NoiseSchedule | str, num_timesteps: int) -> np.ndarray:
    """A copy of the schedule's betas (the caller may change it)."""
    return _betas(NoiseSchedule(schedule), num_timesteps).copy()


@functools.lru_cache(maxsize=16)
def _betas(schedule: NoiseSchedule, num_timesteps: int) -> np.ndarray:
    # Cached: the cosine schedule is a Python loop over T (about 20 ms at T = 4000), and every process a
    # request's validation or a re-plan builds starts from it.
    if schedule is NoiseSchedule.LINEAR:
        return linear_betas(num_timesteps)
    return cosine_betas(num_timesteps)
