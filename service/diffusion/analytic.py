"""Analytic-DPM (Bao et al., ICLR 2022): the optimal reverse variance of a trained noise predictor.

For ancestral sampling from t = tau_k to s = tau_{k-1} (any respacing), the Gaussian reverse step with
the KL-optimal isotropic variance has (the paper's Theorem 1 with lambda^2 = beta~, the DDPM choice)

    Sigma*_k = beta~_k + coef1_k^2 V_t,  V_t = Var[x0 | x_t] ~= (1 - alpha_bar_t) (1 - Gamma_t) / alpha_bar_t

where beta~_k and coef1_k are the respaced posterior variance and x0 coefficient of the mean (Ho et al.
eq. 7), and Gamma_t = E ||eps_theta(x_t, t)||^2 / d over the data, a scalar per training step estimated
once by Monte Carlo (service.quality.gamma). The first form reads as the law of total variance: the
posterior's own variance plus the uncertainty of x0 carried through the mean. Var[x0 | x_t] is clipped to
[0, min(1, (1 - alpha_bar_t) / alpha_bar_t)]: the lower bound and the two upper bounds of the paper's
Theorem 2 (Gamma >= 0, and data in [-1, 1], whose variance is at most ((b - a) / 2)^2 = 1), which also
absorb the Monte Carlo error of Gamma.

One more bound, also the paper's (its appendix on few-step sampling): the noise added by the last noisy
step (into the smallest kept t, after which only a noise-free step follows) stays in the image, so its
standard deviation is clipped to `LAST_STEP_PIXELS` 8-bit levels in mean absolute value,
E|sigma z| = sigma sqrt(2 / pi) <= 2 * (2 / 255). Without it, K = 10 on the bundled model (v1) adds noise of
std 0.066 (8 levels) in that step and scores FID 8.24 (500 samples) against fixed-small's 6.41.
"""

from __future__ import annotations

import math

import numpy as np

from service.diffusion.process import SpacedProcess

DATA_HALF_RANGE = 1.0  # images in [-1, 1]: (b - a) / 2
LAST_STEP_PIXELS = 2.0  # the last noisy step's E|sigma z| in 8-bit levels (of 2 / 255 each)


def x0_variance(alphas_cumprod: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Var[x0 | x_t] per step from Gamma_t, clipped to the paper's bounds."""
    snr_inverse = (1.0 - alphas_cumprod) / alphas_cumprod
    upper = np.minimum(DATA_HALF_RANGE**2, snr_inverse)
    return np.clip(snr_inverse * (1.0 - gamma), 0.0, upper)


def analytic_variance(
    process: SpacedProcess, gamma: np.ndarray, last_step_pixels: float | None = LAST_STEP_PIXELS
) -> np.ndarray:
    """Sigma*_k for every step k of the process; `gamma` holds Gamma_t for t = 0..T-1 (original steps).
    `last_step_pixels=None` leaves step 1 unclipped (the exact optimum, as the toy-data test checks)."""
    if len(gamma) != process.original_num_steps:
        raise ValueError(f"Gamma has {len(gamma)} entries; the model has T={process.original_num_steps}")
    gamma_k = np.asarray(gamma, dtype=np.float64)[process.timestep_map]
    variance = process.posterior_variance + process.posterior_mean_coef1**2 * x0_variance(
        process.alphas_cumprod, gamma_k
    )
    if last_step_pixels is not None and len(variance) > 1:
        # Step 1 adds the last noise (step 0 adds none): E|sigma z| = sigma sqrt(2/pi) <= pixels * 2/255.
        bound = (last_step_pixels * 2.0 / 255.0 * math.sqrt(math.pi / 2.0)) ** 2
        variance[1] = min(variance[1], bound)
    return variance
