"""Choosing (sampler, K) for a request that gives a latency budget or a quality target instead of K, or
asks for sampler "auto".

Rules (shown to users in the OpenAPI docs and in errors):
- The candidates are the model's calibrated set. A request that names a sampler (and, for ddpm, a
  variance) chooses among that variant's tradeoff.json points (DDIM points are measured at eta = 0);
  one that names none chooses among the points of the calibrated frontier: FID against K, each point
  better than every cheaper one, across all variants (service.quality.tradeoff.Tradeoff.frontier).
  K <= T, and variants the model cannot run (analytic variance without gamma.json) are left out. A model
  without such points answers 422 `model_uncalibrated` for both targets: a guess at quality would be
  worse than no answer, and latency selection ranges over the same set so that both targets pick from
  points with known quality.
- max_fid: the smallest calibrated K whose FID is at most the target (the cheapest K good enough).
- latency_budget_ms: the largest calibrated K whose predicted latency fits the budget (the best quality
  affordable now; on the frontier, larger K means lower FID).
- sampler "auto" with steps (or the default K): the variant with the best FID at the calibrated K
  nearest to the request's (in log K), at the table's largest sample count.
- Predicted latency = expected queue wait + K x seconds per iteration (whatever the sampler), where the
  iteration time is a moving average measured live at the batch bucket the request would join (current
  in-flight and queued rows plus its own), and the queue wait is zero when free slots hold the request,
  else the moving average of recent rows' waits. Before any live iteration has been measured it falls
  back to the table's seconds_per_image x num_images (batched calibration throughput: optimistic).
  The prediction is then scaled by a learned margin: the 95th percentile of (what recent requests took
  in the server, encoding included) ÷ (this model's prediction for them), at least 1 (latency.py).
- A target no candidate meets answers 422 `target_unreachable` naming the field and the closest K.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from service.api.errors import ApiError
from service.api.latency import LatencyTracker
from service.api.schemas import SamplerMode, SelectionMode
from service.backends.base import EngineLoad, ModelInfo
from service.quality.sampler_kinds import SAMPLER_KINDS
from service.quality.tradeoff import TradeoffPoint


@dataclass(frozen=True)
class StepChoice:
    steps: int
    mode: SelectionMode
    predicted_seconds: float | None = None
    candidates: tuple[int, ...] = ()
    kind: str | None = None  # the sampler variant (tradeoff.json's `sampler`); None: the request's own
    sampler_mode: SamplerMode = "request"
    reason: str = ""


def runnable(info: ModelInfo, kind: str) -> bool:
    """A variant this model can run: known to this server, and analytic only with a Gamma table."""
    found = SAMPLER_KINDS.get(kind)
    return found is not None and (info.has_gamma or not found.needs_gamma)


def calibrated_points(info: ModelInfo, sampler: str) -> list[TradeoffPoint]:
    """The model's calibrated points for a sampler variant, one per K, by increasing K."""
    if info.tradeoff is None or not runnable(info, sampler):
        return []
    by_steps = {p.steps: p for p in info.tradeoff.for_sampler(sampler) if 1 <= p.steps <= info.num_timesteps}
    return [by_steps[k] for k in sorted(by_steps)]


def frontier_points(info: ModelInfo) -> list[TradeoffPoint]:
    """The frontier over the variants this model can run, by increasing K (decreasing FID)."""
    if info.tradeoff is None:
        return []
    table = info.tradeoff
    mine = dataclasses.replace(table, points=[p for p in table.points if runnable(info, p.sampler)])
    return mine.frontier(info.num_timesteps)


def require_frontier(info: ModelInfo, field: str) -> list[TradeoffPoint]:
    points = frontier_points(info)
    if not points:
        raise ApiError(
            422,
            "model_uncalibrated",
            f"{field}: model {info.name!r} has no calibrated points (tradeoff.json), so (sampler, K) "
            "cannot be chosen for a target; give steps instead, or run `ddpm calibrate` on the model",
            field,
        )
    return points


def choose_auto(info: ModelInfo, steps: int, field: str = "sampler") -> StepChoice:
    """The variant with the best FID at the calibrated K nearest to `steps` (ties: the smaller K)."""
    table = info.tradeoff
    points = [] if table is None else [p for p in table.points if runnable(info, p.sampler)]
    if not points:
        raise ApiError(
            422,
            "model_uncalibrated",
            f"{field}: sampler auto picks the best calibrated sampler, and model {info.name!r} has no "
            "calibrated points (tradeoff.json); name a sampler, or run `ddpm calibrate` on the model",
            field,
        )
    count = max(p.num_samples for p in points)
    points = [p for p in points if p.num_samples == count]
    nearest = min({p.steps for p in points}, key=lambda k: (abs(math.log(k / steps)), k))
    best = min((p for p in points if p.steps == nearest), key=lambda p: p.fid)
    where = f"K={nearest}" if nearest == steps else f"K={nearest}, the calibrated K nearest to {steps}"
    reason = f"auto: {best.sampler} has the best calibrated FID at {where} ({best.fid:.2f}, {count} samples)"
    return StepChoice(steps, "steps", kind=best.sampler, sampler_mode="auto", reason=reason)


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
    chosen = good[0]
    reason = (
        f"{chosen.sampler} K={chosen.steps} is the cheapest calibrated point with FID <= {max_fid:g} "
        f"(FID {chosen.fid:.2f}, {chosen.num_samples} samples)"
    )
    return StepChoice(chosen.steps, "max_fid", candidates=candidates, kind=chosen.sampler, reason=reason)


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
    seconds, chosen = max(fitting, key=lambda item: (item[1].steps, -item[1].fid))
    reason = (
        f"{chosen.sampler} K={chosen.steps} is the best calibrated point (FID {chosen.fid:.2f}, "
        f"{chosen.num_samples} samples) predicted to finish within {budget_seconds * 1000:g} ms "
        f"(predicted {seconds * 1000:.0f} ms under the current load)"
    )
    return StepChoice(
        chosen.steps,
        "latency_budget",
        predicted_seconds=seconds,
        candidates=candidates,
        kind=chosen.sampler,
        reason=reason,
    )


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
