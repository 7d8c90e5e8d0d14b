"""Closed-form properties of the diffusion math on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.diffusion.coefficients import coefficient_table, gather
from service.diffusion.config import DiffusionConfig, LossType, VarianceType
from service.diffusion.gaussian import normal_kl
from service.diffusion.prediction import (
    learned_range_log_variance,
    p_mean_variance,
    predict_xstart_from_eps,
    q_posterior_mean,
    q_sample,
)
from service.diffusion.process import spaced_process
from service.diffusion.schedules import cosine_betas, linear_betas
from service.diffusion.steps import ddim_step
from tests.golden import base_process

COSINE = DiffusionConfig("cosine", 1000, True, False, LossType.MSE)  # type: ignore[arg-type]


@pytest.mark.parametrize("respacing", ["5", "25", "ddim50", "10,15,20", "250"])
def test_respacing_keeps_alphas_cumprod_at_kept_steps(respacing: str) -> None:
    full = base_process(COSINE)
    spaced = spaced_process(COSINE, respacing)
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[spaced.timestep_map], rtol=1e-8)


def test_cosine_schedule_is_clipped_and_increasing() -> None:
    betas = cosine_betas(4000)
    assert betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(betas) >= 0)
    assert linear_betas(1000)[0] == pytest.approx(1e-4) and linear_betas(1000)[-1] == pytest.approx(0.02)


def test_posterior_matches_bayes_rule_formulas() -> None:
    """mu~ and beta~ (Ho et al. eq. 6-7) computed from alpha_bar directly."""
    p = spaced_process(COSINE, "50")
    ab, ab_prev, beta = p.alphas_cumprod, p.alphas_cumprod_prev, p.betas
    np.testing.assert_allclose(p.posterior_variance, (1 - ab_prev) / (1 - ab) * beta)
    np.testing.assert_allclose(p.posterior_mean_coef1, np.sqrt(ab_prev) * beta / (1 - ab))
    np.testing.assert_allclose(p.posterior_mean_coef2, np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab))
    # q(x_{t-1} | x_t, x_0) has mean equal to the q_sample mean at t-1 when x_t is its own mean path.
    table = coefficient_table(p)
    x0 = torch.linspace(-1, 1, 12).view(1, 3, 2, 2)
    c = gather(table, torch.tensor([10]))
    x_t = q_sample(x0, torch.zeros_like(x0), c)
    mean = q_posterior_mean(x0, x_t, c)
    expected = torch.tensor(np.sqrt(ab_prev[10]), dtype=torch.float32) * x0
    torch.testing.assert_close(mean, expected, atol=1e-6, rtol=1e-5)


def test_eps_to_x0_inverts_q_sample() -> None:
    p = spaced_process(COSINE, "ddim25")
    table = coefficient_table(p)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1
    eps = torch.randn(4, 1, 3, 3, generator=g)
    c = gather(table, torch.tensor([0, 3, 12, 24]))
    x_t = q_sample(x0, eps, c)
    torch.testing.assert_close(predict_xstart_from_eps(x_t, eps, c), x0, atol=2e-4, rtol=1e-4)


def test_ddim_eta0_with_oracle_eps_recovers_x0() -> None:
    """Deterministic DDIM with the true eps lands exactly on x0 (Song et al. eq. 12)."""
    p = spaced_process(COSINE, "ddim10")
    table = coefficient_table(p)
    x0 = torch.tensor([[[[0.5, -0.25], [0.75, -0.9]]]])
    eps = torch.tensor([[[[0.3, -1.2], [0.8, 0.1]]]])
    c = gather(table, torch.tensor([p.num_timesteps - 1]))
    x = q_sample(x0, eps, c)
    for k in range(p.num_timesteps - 1, -1, -1):
        c = gather(table, torch.tensor([k]))
        oracle_eps = (x - torch.sqrt(c.alphas_cumprod) * x0) / torch.sqrt(1 - c.alphas_cumprod)
        out = p_mean_variance(oracle_eps, None, x, c, VarianceType.FIXED_SMALL)
        x = ddim_step(x, out, torch.randn_like(x), c, eta=0.0)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


def test_learned_range_interpolates_between_beta_tilde_and_beta() -> None:
    p = spaced_process(COSINE, "10")
    c = gather(coefficient_table(p), torch.tensor([5, 5]))
    v = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
    log_var = learned_range_log_variance(v, c).flatten()
    assert log_var[0].item() == pytest.approx(np.log(p.posterior_variance[5]), rel=1e-6)
    assert log_var[1].item() == pytest.approx(np.log(p.betas[5]), rel=1e-6)


def test_normal_kl_of_identical_gaussians_is_zero() -> None:
    m = torch.randn(3)
    assert torch.allclose(normal_kl(m, torch.zeros(3), m, torch.zeros(3)), torch.zeros(3))
    assert normal_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1)).item() == pytest.approx(
        0.5
    )


def test_ddim_at_eta_one_stays_finite_where_float32_cancels_below_zero() -> None:
    """1 - alpha_bar_prev - sigma^2 is >= 0 in exact arithmetic; at eta = 1 with alpha_bar_prev within an
    ulp of 1 its float32 value is -1.4e-14 (correctly rounded IEEE ops, so on every CPU), whose sqrt was
    NaN. Found as a NaN image of a K = 9 DDIM(eta = 1) row on an AMD EPYC."""
    c = gather(coefficient_table(spaced_process(COSINE, "10")), torch.tensor([0]))
    c = c._replace(
        alphas_cumprod=torch.tensor([0.2771395146846771]),
        alphas_cumprod_prev=torch.tensor([0.9999999403953552]),
    )
    a, a_prev = c.alphas_cumprod, c.alphas_cumprod_prev
    sigma = torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)  # as ddim_step computes it
    sigma_sq = sigma**2
    assert (1 - c.alphas_cumprod_prev - sigma_sq).item() < 0  # the cancellation this test is about
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = p_mean_variance(torch.randn_like(x), None, x, c, VarianceType.FIXED_SMALL)
    assert torch.isfinite(ddim_step(x, out, torch.randn_like(x), c, eta=1.0)).all()
