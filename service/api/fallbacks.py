"""Load-adaptive budgets, the API's half: which coarser (sampler, K) a request accepts, and what the
degradation it got cost in calibrated quality.

A request states its tolerance with `min_steps` (the fewest steps it accepts) and/or `max_degraded_fid`
(the worst calibrated FID it accepts). Without either nothing changes: it runs as asked or is refused.
With them, the engine may run any of the fallbacks built here when the load requires it
(service.engine.degrade decides with the live load); the rules, also in the OpenAPI description:

- The ladder is the calibrated frontier (every variant this model runs) when the server chose the
  sampler (no sampler named, or "auto"), else the named variant's own calibrated K. A model without
  calibrated points gets halvings of K.
- Fallbacks are the ladder's points below the asked K and at or above the floor, largest first, then
  the floor itself (min_steps), run by the variant with the best calibrated FID nearest that K on the
  frontier, or by the named variant.
- With max_degraded_fid, only points whose calibrated FID is at most that value; such a request needs
  a calibrated model.
"""

from __future__ import annotations

import math

from service.api.errors import ApiError, invalid
from service.api.schemas import GenerateRequest
from service.api.selection import StepChoice, calibrated_points, choose_auto, frontier_points
from service.backends.base import ModelInfo, StepOption
from service.quality.sampler_kinds import sampler_kind
from service.quality.tradeoff import TradeoffPoint


def fallbacks_for(
    body: GenerateRequest, info: ModelInfo, choice: StepChoice, kind: str
) -> tuple[StepOption, ...]:
    """The coarser options the request accepts, largest K first (empty: it does not degrade). `kind` is
    the variant the plan runs."""
    if body.min_steps is None and body.max_degraded_fid is None:
        return ()
    if body.min_steps is not None and body.min_steps > info.num_timesteps:
        message = (
            f"min_steps must be at most T={info.num_timesteps} for model {info.name!r}, got {body.min_steps}"
        )
        raise invalid("min_steps", message)
    # A floor at or above the K that runs leaves nothing coarser to run: the request is not degraded
    # (not an error: with a latency budget or FID target the K is the server's choice, not the client's).
    server_chose = choice.sampler_mode != "request"
    ladder = frontier_points(info) if server_chose else calibrated_points(info, kind)
    if body.max_degraded_fid is not None:
        if not ladder:
            raise ApiError(
                422,
                "model_uncalibrated",
                f"max_degraded_fid: model {info.name!r} has no calibrated points (tradeoff.json) to judge "
                "a degraded image's quality by; give min_steps instead",
                "max_degraded_fid",
            )
        ladder = [p for p in ladder if p.fid <= body.max_degraded_fid]
    floor = body.min_steps or 1
    options = {_option(p) for p in ladder if floor <= p.steps < choice.steps}
    # min_steps is a K of its own; with a FID bound too, only calibrated points are known to meet it.
    if body.min_steps is not None and body.min_steps < choice.steps and body.max_degraded_fid is None:
        if not ladder:  # uncalibrated: halvings of K down to the floor
            options.update(_halvings(choice.steps, body.min_steps, kind))
        if body.min_steps not in {o.steps for o in options}:
            nearest = choose_auto(info, body.min_steps, "min_steps").kind if server_chose and ladder else None
            options.add(_option_of(nearest or kind, body.min_steps))
    return tuple(sorted(options, key=lambda o: -o.steps))


def _option(point: TradeoffPoint) -> StepOption:
    return _option_of(point.sampler, point.steps)


def _option_of(kind: str, steps: int) -> StepOption:
    chosen = sampler_kind(kind)
    return StepOption(steps, chosen.sampler, chosen.request_variance)


def _halvings(steps: int, floor: int, kind: str) -> list[StepOption]:
    options, k = [], steps // 2
    while k > floor:
        options.append(_option_of(kind, k))
        k //= 2
    return options


def estimated_fid(info: ModelInfo, kind: str, steps: int) -> float | None:
    """The calibrated FID of a variant at K, interpolated linearly in log K between its two nearest
    calibrated K (a re-planned image's step count is rarely calibrated); None outside its range."""
    points = calibrated_points(info, kind)
    exact = next((p.fid for p in points if p.steps == steps), None)
    if exact is not None or len(points) < 2:
        return exact
    lower = [p for p in points if p.steps < steps]
    upper = [p for p in points if p.steps > steps]
    if not lower or not upper:
        return None
    a, b = lower[-1], upper[0]
    w = (math.log(steps) - math.log(a.steps)) / (math.log(b.steps) - math.log(a.steps))
    return a.fid + w * (b.fid - a.fid)
