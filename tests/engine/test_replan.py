"""Re-planning a running row onto a coarser schedule (issue: load-adaptive step budgets).

The bar: a row re-planned mid-flight ends at t = 0 with a valid image, and its trajectory equals a fresh
run on the same combined schedule with the same noise, to 1e-5.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from service.diffusion.config import VarianceType
from service.diffusion.noise import RowGenerators, image_seed
from service.diffusion.process import process_at
from service.diffusion.replan import MIN_REMAINING, coarsest_fitting, combined_timesteps, remaining_steps
from service.diffusion.respacing import respaced_timesteps
from service.diffusion.sampling import sample_rows
from service.engine.degrade import DegradeReason, StepOption
from service.engine.engine import Engine
from service.engine.generation import GenerationSpec
from service.engine.request import Request, RowState
from service.engine.settings import EngineSettings
from service.model.store import LoadedModel
from tests.engine.test_executor import make_executor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_combined_schedule_keeps_the_past_and_takes_the_coarse_steps_below_the_current_one() -> None:
    kept = [0, 10, 20, 30, 40, 50, 60, 70]
    # At respaced step 5 (t = 50): 50, 60, 70 stay; the coarse schedule's steps below 50 follow.
    assert combined_timesteps(kept, 5, [0, 35, 70]) == [0, 35, 50, 60, 70]
    assert remaining_steps(50, [0, 35, 70]) == 3
    assert remaining_steps(50, [60, 70]) == 1


def test_coarsest_fitting_is_the_largest_k_within_the_budget_and_never_below_the_floor() -> None:
    def schedule(k: int) -> list[int]:
        return respaced_timesteps(1000, k)

    current = 500
    chosen = coarsest_fitting(schedule, current, floor=4, largest=99, budget=10)
    assert chosen is not None and remaining_steps(current, schedule(chosen)) <= 10
    assert remaining_steps(current, schedule(chosen + 1)) > 10  # the largest such K
    assert coarsest_fitting(schedule, current, floor=40, largest=99, budget=10) is None  # floor too fine
    assert coarsest_fitting(schedule, 0, floor=1, largest=99, budget=10) is None  # at the last step
    assert MIN_REMAINING == 2


def replanned_row(model: LoadedModel, sampler: str, variance: VarianceType | None) -> RowState:
    request = Request(
        request_id="r/0",
        group_id="r",
        model=model.name,
        class_label=3,
        steps=20,
        sampler=sampler,
        seed=77,
        variance=variance,
        fallbacks=(StepOption(4, sampler, variance),),
    )
    return RowState(request, 20)


@pytest.mark.parametrize(
    ("sampler", "variance"),
    [("ddpm", None), ("ddpm", VarianceType.FIXED_SMALL), ("ddim", None), ("dpm++2m", None)],
)
def test_replanned_trajectory_equals_a_fresh_run_on_the_combined_schedule(
    tiny_model: LoadedModel, sampler: str, variance: VarianceType | None
) -> None:
    # One intra-op thread, as the fresh run has: the executor would otherwise time other thread counts
    # now and then, and a different reduction order moves the last bits.
    executor = make_executor(tiny_model, max_batch=2, threads=1)
    row = replanned_row(tiny_model, sampler, variance)
    row.slot = 0
    executor.admit([row])
    trajectory = []
    image = None
    for _ in range(7):
        executor.step([row])
        trajectory.append(executor.slots.latents[0].clone())
    assert executor.replan(row, budget=5)
    assert row.replanned_at == 7 and row.cursor + 1 <= 5 and row.num_steps < 20
    kept = executor.slots.info[0].timesteps.tolist()  # type: ignore[union-attr]
    while image is None:
        outcome = executor.step([row])
        trajectory.append(executor.slots.latents[0].clone())
        image = outcome.finished[0][1] if outcome.finished else None
    assert row.cursor == -1 and len(trajectory) == len(kept) == row.num_steps
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)

    # A fresh run: the combined schedule from the start, the same seed, the same network.
    fresh = []
    process = process_at(tiny_model.manifest.diffusion, kept)
    noise = RowGenerators([image_seed(77, 0)], device="cpu")
    x_T = noise.initial((3, 16, 16))
    with torch.no_grad():
        final = sample_rows(
            tiny_model.denoiser,
            [process],
            x_T,
            noise,
            y=torch.tensor([3]),
            sampler=sampler,
            variance_type=variance or tiny_model.manifest.diffusion.variance_type,
            on_iteration=lambda i, x: fresh.append(x[0].clone()),
            gamma=tiny_model.gamma_per_step,
        )
    assert len(fresh) == len(trajectory)
    for step, (a, b) in enumerate(zip(trajectory, fresh, strict=True)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"step {step}: {float((a - b).abs().max())}"
    assert final.abs().max() <= 1.0  # ended at t = 0 with a clipped x_0


def test_a_replan_that_cannot_shorten_the_row_leaves_it_alone(tiny_model: LoadedModel) -> None:
    executor = make_executor(tiny_model, max_batch=2)
    row = replanned_row(tiny_model, "ddpm", None)
    row.slot = 0
    executor.admit([row])
    executor.step([row])
    table = executor.slots.info[0].table  # type: ignore[union-attr]
    assert not executor.replan(row, budget=2)  # the floor (K=4) keeps more than 2 steps below t
    assert executor.slots.info[0].table is table and row.replanned_at is None  # type: ignore[union-attr]


def test_a_row_whose_deadline_comes_at_risk_is_replanned_and_ends_in_time(tiny_model: LoadedModel) -> None:
    """Through the real engine: admitted as asked (no iteration measured yet), then each step turns out
    to take ~30 ms, so K = 200 would need 6 s of a 3 s deadline; the row is re-planned and delivered."""

    def slow(x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        time.sleep(0.03)
        return tiny_model.denoiser(x_t, model_t, y)

    engine = Engine(tiny_model, EngineSettings(max_batch=2, warmup_iterations=1), denoiser=slow)
    engine.start()
    try:
        assert engine.wait_ready(60)
        fallbacks = (StepOption(5, "ddpm"),)
        spec = GenerationSpec(tiny_model.name, 3, 200, seed=5, timeout_seconds=3.0, fallbacks=fallbacks)
        result = engine.generate(spec, timeout=60)
    finally:
        engine.stop(drain=False, timeout=60)
    degradation = result.degradation
    assert degradation is not None and degradation.reason is DegradeReason.REPLANNED
    assert 5 <= degradation.steps_used[0] < 200 and degradation.replanned_at[0] is not None
    assert result.total_seconds <= 3.0 and result.images[0].shape == (16, 16, 3)
