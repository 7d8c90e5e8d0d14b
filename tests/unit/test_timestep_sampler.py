"""Importance sampling of t for L_vlb (Nichol & Dhariwal section 3.3)."""

from __future__ import annotations

import numpy as np
import torch

from service.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler


def test_uniform_weights_are_one() -> None:
    t, w = UniformSampler(10).sample(64, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 10
    torch.testing.assert_close(w, torch.ones(64))


def test_second_moment_sampler_is_uniform_until_warm_then_favours_large_losses() -> None:
    sampler = LossSecondMomentSampler(4, history_per_term=2)
    assert np.allclose(sampler.probabilities(), 0.25)
    for _ in range(2):
        sampler.update(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 10.0]))
    assert sampler.warmed_up()
    p = sampler.probabilities()
    assert p.sum() == np.float64(1.0) or abs(p.sum() - 1.0) < 1e-12
    assert p[3] > p[0] and abs(p[3] / p[0] - 10.0) < 0.1
    t, w = sampler.sample(1000, torch.Generator().manual_seed(0))
    # importance weights 1 / (T p_t) keep the estimator unbiased: E[w] over the sampling dist is 1
    assert abs(w.double().mean().item() - 1.0) < 0.2
    assert (t == 3).float().mean() > 0.6


def test_history_keeps_the_last_values_and_state_round_trips() -> None:
    sampler = LossSecondMomentSampler(2, history_per_term=2)
    for v in (1.0, 2.0, 3.0):
        sampler.update(torch.tensor([0]), torch.tensor([v]))
    assert sampler.loss_history[0].tolist() == [2.0, 3.0]
    other = LossSecondMomentSampler(2, history_per_term=2)
    other.load_state_dict(sampler.state_dict())
    assert np.array_equal(other.loss_history, sampler.loss_history)
