"""Load-adaptive admission and the mid-flight risk check (service.engine.degrade, the scheduler's use of
it): plain Python, a fake clock, no torch."""

from __future__ import annotations

import math

import pytest

from service.engine.degrade import (
    DEADLINE_MARGIN,
    DegradeReason,
    GroupDecision,
    StepOption,
    choose_option,
    pressure_budget,
    pressure_cap,
    replan_budget,
)
from service.engine.errors import DeadlineExceeded
from service.engine.request import Request, RowState
from service.engine.scheduler import Scheduler

OPTIONS = [
    StepOption(100, "ddpm"),
    StepOption(50, "ddpm", None),
    StepOption(25, "ddim"),
    StepOption(10, "dpm++2m"),
]


def test_no_pressure_and_time_enough_runs_as_asked() -> None:
    assert choose_option(
        OPTIONS, 0, time_left=None, seconds_per_step=0.1, queued_behind=0, num_slots=16, max_queue=64
    ) == (
        0,
        None,
    )
    assert choose_option(
        OPTIONS,
        0,
        time_left=100 * 0.1 * DEADLINE_MARGIN,
        seconds_per_step=0.1,
        queued_behind=4,
        num_slots=16,
        max_queue=64,
    ) == (0, None)


def test_the_deadline_picks_the_largest_option_that_fits() -> None:
    # 40 steps fit in 4.8 s at 0.1 s x 1.2: K = 25 is the largest option that does.
    assert choose_option(OPTIONS, 0, 4.8, 0.1, 0, 16, 64) == (2, DegradeReason.DEADLINE)
    assert choose_option(OPTIONS, 0, 1.0, 0.1, 0, 16, 64) is None  # not even K = 10 (1.2 s)


def test_queue_pressure_takes_k_geometrically_from_the_asked_one_to_the_floor() -> None:
    # 16 slots, a queue limit of 64: no cap up to Q0 = 4 rows behind, the floor from Q1 = 16 on.
    assert pressure_cap(100, 10, 4, 16, 64) == math.inf
    assert pressure_cap(100, 10, 10, 16, 64) == pytest.approx(100 * 0.1**0.5)  # half-way: the geometric mean
    assert pressure_cap(100, 10, 16, 16, 64) == pytest.approx(10)
    assert pressure_cap(100, 10, 16, 16, 16) == pytest.approx(10)  # Q1 = half a queue limit of 16 = 8
    assert pressure_cap(100, 10, 6, 16, 16) == pytest.approx(10 ** (2 - 0.5))
    assert choose_option(OPTIONS, 0, None, 0.1, 6, 16, 64) == (1, DegradeReason.QUEUE)  # cap 68: K=50
    assert choose_option(OPTIONS, 0, None, 0.1, 12, 16, 64) == (3, DegradeReason.QUEUE)  # cap 18: K=10
    assert choose_option(OPTIONS, 0, None, 0.1, 1000, 16, 64) == (3, DegradeReason.QUEUE)  # never below


def test_replan_budget_is_what_still_fits_when_the_rest_does_not() -> None:
    assert replan_budget(remaining=10, time_left=10.0, seconds_per_step=0.1) is None
    assert replan_budget(remaining=50, time_left=2.4, seconds_per_step=0.1) == 20
    assert replan_budget(remaining=50, time_left=-1.0, seconds_per_step=0.1) == 0
    assert replan_budget(remaining=50, time_left=1.0, seconds_per_step=0.0) is None  # not measured yet


def degradable(group: str, k: int, n: int = 1, deadline: float | None = None) -> list[RowState]:
    fallbacks = tuple(StepOption(s, "ddpm") for s in (50, 25, 10) if s < k)
    decision = GroupDecision()
    rows = []
    for i in range(n):
        request = Request(
            f"{group}/{i}", group, "m", 0, k, image_index=i, deadline=deadline, fallbacks=fallbacks
        )
        row = RowState(request, k)
        row.group = decision
        rows.append(row)
    return rows


def test_admission_degrades_under_pressure_and_siblings_follow_the_first() -> None:
    scheduler = Scheduler(num_slots=4, max_queue=64, clock=lambda: 0.0)
    scheduler.seconds_per_step = 0.01
    first = degradable("a", 100, n=2)
    scheduler.add(first)
    scheduler.add([row for i in range(12) for row in degradable(f"b{i}", 100)])
    plan = scheduler.schedule()
    a0, a1 = first
    # 13 rows were queued behind a/0, beyond Q1 = 4 slots: the floor; a/1 runs what a/0 chose.
    assert a0.num_steps == a1.num_steps == 10 and a0.degraded is a1.degraded is DegradeReason.QUEUE
    assert a0.asked is not None and a0.asked.steps == 100 and a0.request.steps == 10
    assert a0.request.sampler == "ddpm" and a0.cursor == 9
    assert len(plan.admitted) == 4 and not plan.dropped


def test_a_row_with_fallbacks_is_refused_only_below_its_floor() -> None:
    now = [0.0]
    scheduler = Scheduler(num_slots=2, max_queue=8, clock=lambda: now[0])
    scheduler.seconds_per_step = 0.1
    (fits,) = degradable("fits", 100, deadline=2.0)  # 100 steps need 12 s; K = 10 needs 1.2 s
    (late,) = degradable("late", 100, deadline=1.0)  # even K = 10 needs more than 1 s
    plain = RowState(Request("plain/0", "plain", "m", 0, 100, deadline=2.0), 100)
    scheduler.add([fits, late, plain])
    plan = scheduler.schedule()
    assert plan.admitted == [fits] and fits.num_steps == 10 and fits.degraded is DegradeReason.DEADLINE
    dropped = {row.request.group_id: error for row, error in plan.dropped}
    assert set(dropped) == {"late", "plain"} and all(
        isinstance(e, DeadlineExceeded) for e in dropped.values()
    )
    assert "floor of K=10" in str(dropped["late"])


def test_running_rows_at_risk_are_listed_with_the_steps_they_can_afford() -> None:
    now = [0.0]
    scheduler = Scheduler(num_slots=4, max_queue=8, clock=lambda: now[0])
    (row,) = degradable("r", 100, deadline=10.0)
    plain = RowState(Request("p/0", "p", "m", 0, 100, deadline=10.0), 100)
    scheduler.add([row, plain])
    plan = scheduler.schedule()  # admitted with no measured iteration time: as asked
    assert row.num_steps == 100 and plan.replan == []
    scheduler.seconds_per_step = 0.2  # the load rose: 100 steps now need 24 s, 10 s are left
    now[0] = 0.5
    plan = scheduler.schedule()
    assert plan.replan == [
        (row, math.floor(9.5 / (0.2 * DEADLINE_MARGIN)))
    ]  # the plain row is not re-planned


def test_running_rows_shorten_when_work_queues_behind_them() -> None:
    scheduler = Scheduler(num_slots=2, max_queue=64, clock=lambda: 0.0)
    big = degradable("big", 100)
    scheduler.add(big)
    scheduler.schedule()  # admitted as asked: nothing queued behind it
    (row,) = big
    for _ in range(60):  # 60 steps taken, 40 left
        row.cursor -= 1
    scheduler.add([r for i in range(4) for r in degradable(f"q{i}", 100)])
    plan = scheduler.schedule()  # one of them takes the free slot; 3 stay queued (Q1 = 2 slots): the floor
    (replan,) = [(r, budget) for r, budget in plan.replan if r is row]
    assert replan[1] == 10 * 40 // 100  # its share of a K = 10 schedule
    assert pressure_budget(math.inf, 40, 100) is None and pressure_budget(50.0, 40, 100) == 20
