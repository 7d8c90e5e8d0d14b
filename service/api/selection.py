"""Choosing K for a request that gives a latency budget or a quality target instead of K.

Rules (shown to users in the OpenAPI docs and in errors):
- The candidates are the model's calibrated set: the K values of tradeoff.json points of the request's
  sampler ("ddpm" or "ddim"; DDIM points are measured at eta = 0), K <= T. A model without such points
  answers 422 `model_uncalibrated` for both targets: a guess at quality would be worse than no answer,
  and latency selection ranges over the same set so that both targets pick from K values with known
  quality.
- max_fid: the smallest calibrated K whose FID is at most the target (the cheapest K good enough).
- latency_budget_ms: the largest calibrated K whose predicted latency fits the budget (the best quality
  affordable now). Predicted latency = expected queue wait + K x seconds per iteration, where the
  iteration time is a moving average measured live at the batch bucket the request would join (current
  in-flight and queued rows plus its own), and the queue wait is zero when free slots hold the request,
  else the moving average of recent rows' waits. Before any live iteration has been measured it falls
  back to the table's seconds_per_image x num_images (batched calibration throughput: optimistic).
  The prediction is then scaled by a learned margin: the 95th percentile of (what recent requests took
  in the server, encoding included) ÷ (this model's prediction for them), at least 1 (latency.py).
- A target no candidate meets answers 422 `target_unreachable` naming the field and the closest K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.api.errors import ApiError
from service.api.latency import LatencyTracker
from service.api.schemas import SelectionMode
from service.backends.base import EngineLoad, ModelInfo
from service.quality.tradeoff import TradeoffPoint


@dataclass(frozen=True)
class StepChoice:
    steps: int
    mode: SelectionMode
    predicted_seconds: float | None = None
    candidates: tuple[int, ...] = ()


def calibrated_points(info: ModelInfo, sampler: str) -> list[TradeoffPoint]:
    """The model's calibrated points for a sampler, one per K, by increasing K."""
    if info.tradeoff is None:
        return []
    by_steps = {p.steps: p for p in info.tradeoff.for_sampler(sampler) if 1 <= p.steps <= info.num_timesteps}
    return [by_steps[k] for k in sorted(by_steps)]


def point_at(info: ModelInfo, sampler: str, steps: int) -> TradeoffPoint | None:
    return next((p for p in calibrated_points(info, sampler) if p.steps == steps), None)


def require_calibrated(info: ModelInfo, sampler: str, field: str) -> list[TradeoffPoint]:
    points = calibrated_points(info, sampler)
    if not points:
        raise ApiError(
            422,
            "model_uncalibrated",
            f"{field}: model {info.name!r} has no calibrated {sampler} points (tradeoff.json), so K "
            "cannot be chosen for a target; give steps instead, or run `ddpm calibrate` on the model",
            field,
        )
    return points


def choose_for_fid(points: list[TradeoffPoint], max_fid: float) -> StepChoice:
    candidates = tuple(p.steps for p in points)
    good = [p for p in points if p.fid <= max_fid]
    if not good:
        best = min(points, key=lambda p: p.fid)
        raise ApiError(
            422,
            "target_unreachable",
            f"max_fid: no calibrated K reaches FID <= {max_fid:g}; the best is FID {best.fid:.2f} at "
            f"K={best.steps}",
            "max_fid",
        )
    return StepChoice(good[0].steps, "max_fid", candidates=candidates)


def choose_for_latency(
    points: list[TradeoffPoint], budget_seconds: float, predict: Callable[[TradeoffPoint], float]
) -> StepChoice:
    candidates = tuple(p.steps for p in points)
    predicted = [(predict(p), p) for p in points]
    fitting = [(seconds, p) for seconds, p in predicted if seconds <= budget_seconds]
    if not fitting:
        seconds, fastest = min(predicted, key=lambda item: item[0])
        raise ApiError(
            422,
            "target_unreachable",
            f"latency_budget_ms: no calibrated K is predicted to finish within {budget_seconds * 1000:g} "
            f"ms under the current load; the fastest, K={fastest.steps}, is predicted at "
            f"{seconds * 1000:.0f} ms",
            "latency_budget_ms",
        )
    seconds, chosen = max(fitting, key=lambda item: item[1].steps)
    return StepChoice(chosen.steps, "latency_budget", predicted_seconds=seconds, candidates=candidates)


class LatencyPredictor:
    """Predicted seconds for this request at a calibrated point (see the module docstring)."""

    def __init__(self, tracker: LatencyTracker, load: EngineLoad | None, num_images: int) -> None:
        self.num_images = num_images
        if load is None:  # a backend that cannot tell its load: assume an idle worker
            self.queue_wait = 0.0
            rows = num_images
        else:
            slots = load.in_flight + load.free_slots
            fits_now = load.free_slots - load.queue_depth >= num_images
            self.queue_wait = 0.0 if fits_now else tracker.queue_wait()
            rows = min(slots, load.in_flight + load.queue_depth + num_images)
        self.step_seconds = tracker.step_seconds(rows)
        self.margin = tracker.margin()

    def base(self, steps: int) -> float | None:
        """The step-time model alone (what outcomes are compared with); None before any measurement."""
        if self.step_seconds is None:
            return None
        return self.queue_wait + steps * self.step_seconds

    def __call__(self, point: TradeoffPoint) -> float:
        base = self.base(point.steps)
        if base is None:
            return (self.queue_wait + point.seconds_per_image * self.num_images) * self.margin
        return base * self.margin


def least_loaded(loads: list[EngineLoad], model: str) -> EngineLoad | None:
    """The worker the request will most likely run on (the pool routes to the least loaded one)."""
    mine = [load for load in loads if load.model == model]
    return min(mine, key=lambda load: load.queue_depth + load.in_flight, default=None)
