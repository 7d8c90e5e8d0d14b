"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) on a discrete-time eps-prediction model.

Notation: alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t)
(half the log-SNR). The solver predicts data, D = x0_theta(x_t, t) = (x_t - sigma_t eps) / alpha_t, and
steps from s to t with h = lambda_t - lambda_s:

    first order:   x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) D_s
    second order:  the same with D = (1 + 1/(2r)) D_s - 1/(2r) D_prev, r = h_prev / h

where D_prev and h_prev belong to the previous step. Everything but D depends only on the step's place
in the timestep list, so it is precomputed per step into four coefficient columns (dpm_*), and a row
carries one tensor between steps (its previous D): rows of any K share a network call and get exactly
what they would get alone. The first step is first order (no D_prev yet), and so is the last, which
goes to sigma = 0 (the clean image): the paper's lower-order final step, which keeps few-step sampling
stable. With sigma_next = 0 the update is x_next = D, so no infinite lambda is ever formed.

Which timesteps: K network evaluations at t_{K-1} > ... > t_0 >= 1, then the final step to sigma = 0
(t = 0 is never evaluated: its noise, std 3e-3 here, is below half an 8-bit level). "time-uniform" spaces
them evenly in t, as diffusers' `timestep_spacing="linspace"` does; "logsnr-uniform" evenly in lambda
from lambda(T-1) (or LAMBDA_MIN, below) to lambda(0), as the DPM-Solver paper recommends. Measured on the
bundled model (bench/dpm_spacing.py, FID at 500 samples, same seeds):

    K     time-uniform   logSNR-uniform from t = T-1   logSNR-uniform from lambda = -5.1 (default)
    10    6.09           3.57                          2.79
    25    4.63           3.97                          4.13

Time-uniform loses because its last evaluation is at t = T/K (400 at K = 10, lambda 1.8) and its final
first-order jump from there to the clean image is coarse; logSNR-uniform ends at t = 7 (lambda 4.7). At
K = 25 every deterministic sampler here is near the limit of this model's probability-flow ODE, which
scores worse than ancestral sampling with a good variance (DDIM: 4.6 / 4.6 / 4.5 at K = 25 / 50 / 100),
so more steps do not help; docs/quality.md has the frontier across samplers.
"""

from __future__ import annotations

import numpy as np

from service.diffusion.config import DiffusionConfig
from service.diffusion.process import SpacedProcess, process_at
from service.diffusion.respacing import RespacingError
from service.diffusion.schedules import named_betas

SPACINGS = ("time-uniform", "logsnr-uniform")
# logSNR-uniform steps start where lambda reaches this, not at t = T-1, when the schedule goes lower: the
# cosine schedule's clipped last betas send lambda from -5.6 (t = 3990 of 4000) to -11.3 (t = 3999), and
# lambda-uniform steps there are a fraction of a training step apart: rounded to distinct steps they spend
# 3 of 10 evaluations in t >= 3994, where nothing changes, at irregular spacings that swing the
# second-order weights 1/(2r), r = h_prev / h, by factors of ten. Starting at -5.1 took K = 10 from FID
# 3.57 to 2.79 (table above). The value is diffusers' recommendation for the cosine schedule
# (`lambda_min_clipped`); x_T ~ N(0, I) is then taken as x at lambda = -5.1, whose signal scale is 0.006.
LAMBDA_MIN = -5.1
DEFAULT_SPACING = "logsnr-uniform"  # measured, see the module docstring


def dpm_solver_timesteps(
    config: DiffusionConfig, steps: int | str, spacing: str = DEFAULT_SPACING
) -> list[int]:
    """The K training steps the solver evaluates, ascending (the process's timestep_map)."""
    k = _count(steps)
    T = config.num_timesteps
    if not 1 <= k <= T - 1:
        raise RespacingError(f"dpm++2m takes 1 to T-1={T - 1} steps (t = 0 is never evaluated), got {k}")
    if spacing == "time-uniform":
        # linspace(0, T-1, K+1) rounded, without its 0: the grid diffusers' "linspace" spacing gives.
        grid = np.round(np.linspace(0, T - 1, k + 1))[1:]
    elif spacing == "logsnr-uniform":
        lam = half_log_snr(np.cumprod(1.0 - named_betas(config.noise_schedule, T)))
        # K+1 points evenly in lambda from max(lambda(T-1), LAMBDA_MIN) to lambda(0), without the last,
        # each mapped to t through lambda(t) (decreasing, hence the negations) and rounded. Where lambda
        # moves fast, neighbouring targets can round to one step (see _distinct_descending).
        targets = np.linspace(max(lam[T - 1], LAMBDA_MIN), lam[0], k + 1)[:-1]
        rounded = np.round(np.interp(-targets, -lam, np.arange(T)))
        grid = _distinct_descending(rounded, T)
    else:
        raise RespacingError(f"dpm++2m spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    kept = sorted({int(t) for t in grid if t >= 1})
    if len(kept) != k:
        raise RespacingError(f"{spacing} spacing cannot place {k} distinct steps in T={T}")
    return kept


def dpm_solver_process(
    config: DiffusionConfig, steps: int | str, spacing: str = DEFAULT_SPACING
) -> SpacedProcess:
    return process_at(config, dpm_solver_timesteps(config, steps, spacing))


def half_log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda = log(alpha / sigma) = (log alpha_bar - log(1 - alpha_bar)) / 2."""
    return 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))


def dpm_solver_columns(process: SpacedProcess) -> dict[str, np.ndarray]:
    """The four per-step DPM-Solver++(2M) coefficients of every step k (from tau_k towards tau_{k-1}, or
    to sigma = 0 from step 0), float64 [K] each."""
    alpha_bar = process.alphas_cumprod  # at tau_k (a respaced process keeps alpha_bar of its steps)
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    alpha_next = np.append(1.0, alpha[:-1])  # the target of step k: tau_{k-1}, or clean data at k = 0
    sigma_next = np.append(0.0, sigma[:-1])
    # e^-h = (sigma_next / alpha_next) / (sigma / alpha): exactly 0 at the final step.
    exp_neg_h = (sigma_next * alpha) / (alpha_next * sigma)
    lam = half_log_snr(alpha_bar)
    k = len(alpha_bar)
    w_cur, w_prev = np.ones(k), np.zeros(k)
    # Second order where there is a previous step (k < K-1) and the target is not sigma = 0 (k > 0).
    for i in range(1, k - 1):
        h = lam[i - 1] - lam[i]
        h_prev = lam[i] - lam[i + 1]
        r = h_prev / h
        w_cur[i], w_prev[i] = 1.0 + 1.0 / (2.0 * r), -1.0 / (2.0 * r)
    return {
        "dpm_x_coef": sigma_next / sigma,
        "dpm_x0_coef": alpha_next * (1.0 - exp_neg_h),
        "dpm_w_cur": w_cur,
        "dpm_w_prev": w_prev,
    }


def _distinct_descending(steps: np.ndarray, num_timesteps: int) -> np.ndarray:
    """K descending steps made distinct within 1..T-1 with the least moving: each step at most one
    below the one before it (from the noisy end), then at least one above the one after it (from the
    clean end, where steps rounded to 0 would otherwise be lost)."""
    grid = np.clip(steps.astype(np.int64), 1, num_timesteps - 1)
    k = len(grid)
    for i in range(1, k):
        grid[i] = min(grid[i], grid[i - 1] - 1)
    grid[k - 1] = max(grid[k - 1], 1)
    for i in range(k - 2, -1, -1):
        grid[i] = max(grid[i], grid[i + 1] + 1)
    return grid


def _count(steps: int | str) -> int:
    if isinstance(steps, int):
        return steps
    text = str(steps).strip()
    if not text.isdigit():
        raise RespacingError(f"dpm++2m takes an integer K, not the respacing string {steps!r}")
    return int(text)
