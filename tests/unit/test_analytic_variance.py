"""Analytic variance (service.diffusion.analytic, Analytic-DPM) on data whose reverse process is known.

For data x0 ~ N(0, s^2 I), x_t = alpha_t x0 + sigma_t z is Gaussian with variance v_t = alpha_bar_t s^2 +
1 - alpha_bar_t per coordinate, the optimal noise predictor is E[z | x_t] = sigma_t x_t / v_t, and two kept
steps s < t are jointly Gaussian with Cov[x_s, x_t] = sqrt(alpha_bar_t / alpha_bar_s) v_s, so the true
reverse step q(x_s | x_t) has the variance (of one coordinate)

    Var[x_s | x_t] = v_s - (alpha_bar_t / alpha_bar_s) v_s^2 / v_t

(at the last step x_s is the data itself: alpha_bar_s = 1, v_s = s^2). Analytic-DPM's Sigma*_k is this
variance when Gamma_t is exact, and close to it when Gamma_t is estimated by Monte Carlo, as `ddpm gamma`
estimates it from a network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.diffusion.analytic import LAST_STEP_PIXELS, analytic_variance
from service.diffusion.config import DiffusionConfig, LossType, VarianceType
from service.diffusion.process import SpacedProcess, spaced_process
from service.diffusion.schedules import named_betas
from service.engine.errors import InvalidRequest
from service.engine.generation import GenerationSpec
from service.engine.solo import sample
from service.model.gamma_table import GammaTable
from service.model.store import LoadedModel

DATA_VAR = 0.5**2  # s^2
T = 1000


def _config(schedule: str) -> DiffusionConfig:
    return DiffusionConfig(schedule, T, True, False, LossType.MSE)  # type: ignore[arg-type]


def alpha_bar_of(schedule: str) -> np.ndarray:
    """alpha_bar_t for t = 0..T-1 of the base (not respaced) schedule, float64."""
    return np.cumprod(1.0 - named_betas(schedule, T))


def exact_reverse_variance(process: SpacedProcess) -> np.ndarray:
    """Var[x_s | x_t] of every step k (t = tau_k, s = tau_{k-1}; s is the data at k = 0) for Gaussian data."""
    alpha_bar, alpha_bar_prev = process.alphas_cumprod, process.alphas_cumprod_prev
    v_t = alpha_bar * DATA_VAR + 1 - alpha_bar
    v_s = alpha_bar_prev * DATA_VAR + 1 - alpha_bar_prev
    return v_s - (alpha_bar / alpha_bar_prev) * v_s**2 / v_t


def exact_gamma(alpha_bar: np.ndarray) -> np.ndarray:
    """Gamma_t = E||E[z | x_t]||^2 / d = sigma_t^2 / v_t for Gaussian data."""
    return (1 - alpha_bar) / (alpha_bar * DATA_VAR + 1 - alpha_bar)


def monte_carlo_gamma(schedule: str, timesteps: list[int], samples: int, dim: int, seed: int) -> GammaTable:
    """Gamma_t at `timesteps` estimated as `ddpm gamma` does: the mean of ||eps*(x_t, t)||^2 / d over draws
    of x_t = alpha_t x0 + sigma_t z, with the optimal predictor eps* in place of a network. The same draws
    of (x0, z) serve every t (common random numbers: cheaper, and each Gamma_t is still an unbiased
    estimate with the same error)."""
    alpha_bar = alpha_bar_of(schedule)
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(samples, dim, generator=generator) * DATA_VAR**0.5
    z = torch.randn(samples, dim, generator=generator)
    gamma = []
    for t in timesteps:
        a = float(alpha_bar[t])
        x_t = a**0.5 * x0 + (1 - a) ** 0.5 * z
        eps = (1 - a) ** 0.5 * x_t / (a * DATA_VAR + 1 - a)  # the optimal noise predictor at t
        gamma.append(eps.square().sum(dim=1, dtype=torch.float64).mean().item() / dim)
    return GammaTable(
        timesteps=tuple(timesteps),
        gamma=tuple(gamma),
        num_timesteps=T,
        samples_per_step=samples,
        seed=seed,
        data=f"N(0, {DATA_VAR} I), d = {dim}",
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 50, T])
def test_with_the_exact_gamma_sigma_is_the_true_reverse_variance(schedule: str, steps: int) -> None:
    """Theorem 1 of Analytic-DPM is the law of total variance: beta~ + coef1^2 Var[x0 | x_t], computed from
    the exact Gamma_t, is Var[x_s | x_t] at every step, up to float64 rounding."""
    process = spaced_process(_config(schedule), steps)
    sigma = analytic_variance(process, exact_gamma(alpha_bar_of(schedule)), last_step_pixels=None)
    np.testing.assert_allclose(sigma, exact_reverse_variance(process), rtol=1e-6)


@pytest.mark.parametrize(("schedule", "steps"), [("linear", 10), ("linear", 50), ("cosine", 50)])
def test_with_a_monte_carlo_gamma_sigma_is_within_one_percent(schedule: str, steps: int) -> None:
    """Gamma_t from 4096 draws of 1024-dimensional Gaussian data (as `ddpm gamma` would estimate it, with the
    optimal predictor as the network) gives Sigma*_k within 1 % of Var[x_s | x_t] at every step.

    Why these sizes, and not cosine K = 10: Sigma* takes Var[x0 | x_t] from 1 - Gamma_t, so Gamma's relative
    Monte Carlo error (sqrt(2 / (n d)) = 7e-4 here) reaches Sigma* amplified, about 4 times at linear K = 10
    (the step from t = 777); its worst step is off by under 0.4 % for seeds 0-4 (0.05 % for this one). At
    the first step of cosine K = 10 (t = 999 to 888), 1 - Gamma is 6e-10, far below any Monte Carlo error:
    Var[x0 | x_t] then comes from Theorem 2's clip to [0, 1], i.e. from the sign of the error, and Sigma*
    is off by -0.8 % or +2.3 %. At K = 50 that step weighs Var[x0 | x_t] too little to move Sigma* 0.1 %."""
    process = spaced_process(_config(schedule), steps)
    grid = sorted({0, T - 1, *process.timestep_map.tolist()})
    table = monte_carlo_gamma(schedule, grid, samples=4096, dim=1024, seed=0)
    sigma = analytic_variance(process, table.per_step(), last_step_pixels=None)
    exact = exact_reverse_variance(process)
    worst = np.max(np.abs(sigma / exact - 1))
    assert worst < 0.01, f"Sigma* is {worst:.2%} off at step {np.argmax(np.abs(sigma / exact - 1))}"


def test_by_default_only_the_last_noisy_step_is_capped() -> None:
    """The default cap touches step 1 only, the last one that adds noise: its E|sigma z| = sigma sqrt(2/pi)
    is at most LAST_STEP_PIXELS levels of 2/255. Every other step keeps the optimum."""
    process = spaced_process(_config("linear"), 10)
    gamma = exact_gamma(alpha_bar_of("linear"))
    capped, optimum = (
        analytic_variance(process, gamma),
        analytic_variance(process, gamma, last_step_pixels=None),
    )
    others = np.arange(process.num_timesteps) != 1
    np.testing.assert_array_equal(capped[others], optimum[others])
    assert capped[1] < optimum[1]
    assert np.sqrt(capped[1] * 2 / np.pi) == pytest.approx(LAST_STEP_PIXELS * 2 / 255)


def test_a_model_without_a_gamma_table_refuses_analytic_variance(tiny_model: LoadedModel) -> None:
    """No gamma.json: variance=analytic is refused up front, naming the field and the command that makes
    the table, by validation and by the bare sampling loop alike; the other variance types still work."""
    assert tiny_model.gamma is None
    spec = GenerationSpec(tiny_model.name, 1, 5, variance=VarianceType.ANALYTIC)
    for attempt in (
        lambda: spec.validate(tiny_model.manifest, has_gamma=tiny_model.gamma is not None),
        lambda: sample(tiny_model, spec),
    ):
        with pytest.raises(InvalidRequest) as refused:
            attempt()
        assert refused.value.field == "variance"
        assert "ddpm gamma" in str(refused.value) and "gamma.json" in str(refused.value)
    assert spec.validate(tiny_model.manifest, has_gamma=True) == 5  # the same request, given a table
    fixed = GenerationSpec(tiny_model.name, 1, 5, variance=VarianceType.FIXED_SMALL)
    assert fixed.validate(tiny_model.manifest) == 5
