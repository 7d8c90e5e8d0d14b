"""Load-adaptive step budgets: which of its acceptable (sampler, K) a row runs, given the load now.

A request that tolerates it lists, beside the (sampler, K) it asked for, the coarser options it accepts
(`Request.fallbacks`, best first, its floor last; the API builds them from the calibrated frontier). Two
decisions use them, both here so they can be tested without torch:

- At admission into a slot (`choose_option`): the first option, the asked one included, that
  (a) finishes before the deadline at the measured iteration time with `DEADLINE_MARGIN`, and
  (b) is no larger than the queue-pressure cap: with Q rows still waiting behind it and S slots, no cap
      up to Q0 = S x `PRESSURE_START`; from there the cap falls geometrically from the asked K to the
      floor, which it reaches at Q1 = min(S x `PRESSURE_FULL`, the queue's limit x `FLOOR_AT_QUEUE`).
  If none meets both, the smallest option that meets the deadline (the floor, closest to the cap); if
  not even the floor does, the row is refused, as a row without fallbacks is.
  Why a queue cap and not the deadline alone: with the deadline alone the queue grows until waiting
  eats nearly the whole deadline, and only then do admitted rows shrink; every request then takes
  about its timeout, and the bounded queue overflows (429) first. The cap degrades as soon as work
  piles up, the more the more has: in steady overload the queue settles where the service rate matches
  arrivals, between Q0 and Q1, short of the queue's limit, and only when even the floor cannot keep up
  does the queue fill and refuse. Measured (docs/adaptive.md): with the cap falling as Q0 / Q instead,
  the queue settled near its limit of 32 at 2x overload on this CPU, where each request also costs
  HTTP and PNG work beside its steps, and 17 % of requests were refused.
- Mid-flight: a running row whose remaining steps at the current iteration time would end after its
  deadline (`replan_budget`), or exceed its share of the queue-pressure cap (`pressure_budget`), is
  given the number of steps it may keep; the executor re-plans it onto the coarsest schedule from its
  current t within that (service.diffusion.replan), never below its floor. Why the queue too: rows
  admitted at a large K in a lull hold their slots for hundreds of iterations when a burst arrives, and
  the queue behind them overflows before admission can degrade anything; measured in
  docs/adaptive.md.

The rows of one request share a `GroupDecision`: the first admitted decides, its siblings start from the
same option (so its images match), and go lower only when their own later admission needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from service.diffusion.config import VarianceType

DEADLINE_MARGIN = 1.2  # predicted seconds x this must fit the time left: the iteration time varies
PRESSURE_START = 0.25  # Q0 = this x slots: the queue length at which degrading for the queue starts
PRESSURE_FULL = 1.0  # Q1 = this x slots, or FLOOR_AT_QUEUE x the queue's limit if less: the floor
FLOOR_AT_QUEUE = 0.5


@dataclass(frozen=True)
class StepOption:
    """One acceptable way to run a request: K steps of a sampler (and ddpm's variance)."""

    steps: int
    sampler: str
    variance: VarianceType | None = None


class DegradeReason(StrEnum):
    """Why a row ran fewer steps than asked (a bounded set: a metrics label)."""

    DEADLINE = "deadline"  # admitted smaller: the asked K would end after the deadline
    QUEUE = "queue"  # admitted smaller: the queue behind it was long
    REPLANNED = "replanned"  # shortened mid-flight: its deadline came at risk, or work queued behind it


@dataclass
class GroupDecision:
    """What the first admitted row of a request chose; its siblings start from there."""

    index: int = 0  # into (asked, *fallbacks)
    reason: DegradeReason | None = None
    decided: bool = False


def pressure_cap(
    asked_steps: int, floor_steps: int, queued_behind: int, num_slots: int, max_queue: int
) -> float:
    """The largest K the queue allows (see the module docstring); inf when it allows anything."""
    start = max(1.0, PRESSURE_START * num_slots)
    if queued_behind <= start or floor_steps >= asked_steps:
        return math.inf
    full = max(start + 1.0, min(max_queue * FLOOR_AT_QUEUE, PRESSURE_FULL * num_slots))
    fraction = min(1.0, (queued_behind - start) / (full - start))
    # Geometric between the asked K and the floor: each extra queued row takes off the same share of K.
    return asked_steps * (floor_steps / asked_steps) ** fraction


def fits_deadline(steps: int, time_left: float | None, seconds_per_step: float) -> bool:
    """Whether `steps` iterations end before the deadline (always, without a deadline or a measurement)."""
    if time_left is None or seconds_per_step <= 0:
        return True
    return steps * seconds_per_step * DEADLINE_MARGIN <= time_left


def choose_option(
    options: list[StepOption],
    start: int,
    time_left: float | None,
    seconds_per_step: float,
    queued_behind: int,
    num_slots: int,
    max_queue: int,
) -> tuple[int, DegradeReason | None] | None:
    """Which of `options` (the asked one first, the floor last) a row admitted now runs, from index
    `start` on (a sibling's choice), and why it is not the asked one; None: not even the floor fits."""
    cap = pressure_cap(options[0].steps, options[-1].steps, queued_behind, num_slots, max_queue)
    fitting = [
        i for i in range(start, len(options)) if fits_deadline(options[i].steps, time_left, seconds_per_step)
    ]
    if not fitting:
        return None
    under_cap = [i for i in fitting if options[i].steps <= cap]
    index = under_cap[0] if under_cap else fitting[-1]
    if index == 0:
        return 0, None
    if fitting[0] > start:  # the deadline alone ruled out the larger ones
        return index, DegradeReason.DEADLINE
    return index, DegradeReason.QUEUE


def pressure_budget(cap: float, remaining: int, num_steps: int) -> int | None:
    """The steps a running row may keep under the queue-pressure cap: its remaining share of a K = cap
    schedule (schedules here spread their steps over all of t, so the share below the row's current t is
    about its share of its own steps); None when that is not fewer than it has left."""
    if math.isinf(cap):
        return None
    budget = math.floor(cap * remaining / num_steps)
    return budget if budget < remaining else None


def replan_budget(remaining: int, time_left: float, seconds_per_step: float) -> int | None:
    """The steps a running row can still afford, when fewer than its `remaining`; None when it is not at
    risk (or the iteration time is not known yet)."""
    if seconds_per_step <= 0:
        return None
    affordable = math.floor(max(time_left, 0.0) / (seconds_per_step * DEADLINE_MARGIN))
    return affordable if affordable < remaining else None
