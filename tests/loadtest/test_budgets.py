"""The latency-budget scenario: its plan, and (slow) its bookkeeping against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import budgets
from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.quality.tradeoff import Tradeoff, TradeoffPoint, write_tradeoff


def test_budgets_are_log_uniform_in_range_with_one_to_eight_images() -> None:
    plan = budgets.budgets(200, seed=7)
    assert plan == budgets.budgets(200, seed=7)  # seeded
    assert all(budgets.MIN_BUDGET_MS <= ms <= budgets.MAX_BUDGET_MS for ms, _ in plan)
    assert {images for _, images in plan} == set(range(1, budgets.MAX_IMAGES + 1))
    below_a_second = sum(ms < 1000 for ms, _ in plan) / len(plan)
    assert 0.5 < below_a_second < 0.7  # log-uniform: ln(10) / ln(50) = 0.59 of them below 1 s, not 18 %


def test_a_refusal_is_not_kept_but_is_not_counted_against_the_share() -> None:
    kept = budgets.BudgetOutcome(500.0, 2, 200, 300.0, 25)
    late = budgets.BudgetOutcome(500.0, 2, 200, 700.0, 25)
    refused = budgets.BudgetOutcome(100.0, 8, 422, 5.0, None, "target_unreachable")
    phase = budgets.Phase("idle", [kept, late, refused], (0.0, 0.0))
    assert [o.kept for o in phase.outcomes] == [True, False, False]
    assert phase.kept_share == 0.5 and not phase.met


@pytest.mark.slow
def test_both_phases_run_against_a_real_server(tmp_path: Path) -> None:
    model_dir = random_model_dir(get_preset("tiny-test"), tmp_path / "tiny", seed=0, name="tiny")
    points = [
        TradeoffPoint("ddpm", k, 64, 50.0 / k, 0.5, 0.5, 0.9, 0.002 * k, bpd=5.0, bpd_images=8)
        for k in (5, 10, 20)
    ]
    write_tradeoff(model_dir, Tradeoff("tiny", "test", "none", "none", {"64": 1.0}, points))
    result = budgets.run(model_dir, requests=3, saturation_evals_per_s=200.0, compile=False)
    for phase in (result.idle, result.loaded):
        assert len(phase.outcomes) == 3
        assert all(o.status in (200, 422) for o in phase.outcomes), [o.detail for o in phase.outcomes]
        assert all(o.steps in (5, 10, 20) for o in phase.answered)
    background = result.loaded.background
    assert background is not None and background.consistent and background.sent > 0
    assert "## Latency budgets kept" in result.markdown()
