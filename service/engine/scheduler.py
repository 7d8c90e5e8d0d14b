"""Which rows run this iteration: a bounded FCFS queue in front of a fixed number of executor slots.

Plain Python on purpose (no torch): the admission, deadline and cancellation policy is tested with a
fake executor, and the same object drives the real one. Not thread-safe: EngineCore serialises calls.

Each iteration, `schedule()`
  1. drops in-flight rows that were cancelled or whose deadline passed (their slots are freed now, so
     a cancelled row costs at most the one step that was already running),
  2. drops queued rows that were cancelled or expired (never admitted, never run),
  3. admits queued rows, oldest first, into free slots: in continuous mode whenever a slot is free, in
     run-to-completion mode only when no row is in flight (the benchmark baseline: a batch starts on an
     empty executor and runs until its last row finishes). A row that cannot finish its K steps before
     its deadline at the measured iteration time is failed at admission instead: under overload, compute
     spent on an image that ends in a 504 anyway is taken from requests that could still make it. A row
     with fallbacks (coarser (sampler, K) its caller accepts) is admitted at the option the deadline and
     the queue behind it allow, and refused only when not even its floor fits (service.engine.degrade),
  4. lists running rows with fallbacks whose deadline came at risk or whose K the queue behind them no
     longer allows, with the steps they may keep: the executor re-plans them onto a coarser schedule
     from their current t,
  5. returns every row in a slot: the executor advances each of them by exactly one step.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.engine.degrade import (
    DEADLINE_MARGIN,
    GroupDecision,
    choose_option,
    pressure_budget,
    pressure_cap,
    replan_budget,
)
from service.engine.errors import Cancelled, DeadlineExceeded, EngineError, InvalidRequest, QueueFull
from service.engine.request import RowState, RowStatus


@dataclass
class SchedulePlan:
    """What to do this iteration."""

    admitted: list[RowState] = field(default_factory=list)  # new in a slot: initialise latents and RNG
    running: list[RowState] = field(default_factory=list)  # every row to step, in slot order
    dropped: list[tuple[RowState, EngineError]] = field(default_factory=list)  # to report; slot freed
    replan: list[tuple[RowState, int]] = field(default_factory=list)  # rows at risk, steps they can afford


@dataclass(frozen=True)
class Load:
    """Figures for routing (least loaded = smallest queue_depth + in_flight) and metrics."""

    queue_depth: int
    in_flight: int
    free_slots: int
    # The autoscaling signal's two halves (backlog seconds = backlog_steps / row_steps_per_second):
    backlog_steps: int = 0  # row-steps still to run: queued rows' steps plus running rows' remaining ones
    row_steps_per_second: float = 0.0  # measured while iterating (the engine core's moving average)

    @property
    def total(self) -> int:
        return self.queue_depth + self.in_flight


class Scheduler:
    def __init__(
        self,
        num_slots: int,
        max_queue: int,
        *,
        run_to_completion: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_slots < 1 or max_queue < 1:
            raise ValueError(f"num_slots and max_queue must be >= 1, got {num_slots}, {max_queue}")
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.run_to_completion = run_to_completion
        self.clock = clock
        self.retry_after = 1.0  # hint given with QueueFull; EngineCore refreshes it from measured speed
        self.seconds_per_step = 0.0  # measured iteration time (EngineCore); 0 = unknown, admit everything
        self._queue: deque[RowState] = deque()
        self._running: dict[int, RowState] = {}  # slot -> row
        self._free: list[int] = list(range(num_slots))  # a heap: the lowest free slot is used first

    # -- figures --------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def has_work(self) -> bool:
        return bool(self._queue or self._running)

    def load(self) -> Load:
        backlog = sum(row.cursor + 1 for row in (*self._queue, *self._running.values()) if row.cursor >= 0)
        return Load(self.queue_depth, self.in_flight, len(self._free), backlog)

    def running_rows(self) -> list[RowState]:
        return [self._running[s] for s in sorted(self._running)]

    # -- changes from callers -------------------------------------------------------------------

    def add(self, rows: Sequence[RowState]) -> None:
        """Queue all rows of a request, or none of them (raises QueueFull / InvalidRequest)."""
        if len(rows) > self.max_queue:
            raise InvalidRequest(f"at most {self.max_queue} images fit in one request, got {len(rows)}")
        if len(self._queue) + len(rows) > self.max_queue:
            raise QueueFull(
                f"the queue is full ({len(self._queue)} of {self.max_queue} images waiting)",
                retry_after=self.retry_after,
            )
        for row in rows:
            row.status = RowStatus.QUEUED
            self._queue.append(row)

    def cancel(self, group_id: str) -> int:
        """Mark a request's queued and in-flight rows: they leave at the next schedule(). Returns how many."""
        count = 0
        for row in (*self._queue, *self._running.values()):
            if row.request.group_id == group_id and not row.cancel_requested:
                row.cancel_requested = True
                count += 1
        return count

    # -- the iteration --------------------------------------------------------------------------

    def schedule(self) -> SchedulePlan:
        now = self.clock()
        plan = SchedulePlan()
        for slot in sorted(self._running):
            row = self._running[slot]
            error = _drop_reason(row, now)
            if error is not None:
                self.release(row)
                plan.dropped.append((row, error))
        kept: deque[RowState] = deque()
        for row in self._queue:
            error = _drop_reason(row, now)
            if error is None:
                kept.append(row)
            else:
                plan.dropped.append((row, error))
        self._queue = kept
        if not self.run_to_completion or not self._running:
            plan.admitted = self._admit(now, plan.dropped)
        plan.running = self.running_rows()
        plan.replan = self._at_risk(now, plan.running, plan.admitted)
        return plan

    def _at_risk(
        self, now: float, running: list[RowState], admitted: list[RowState]
    ) -> list[tuple[RowState, int]]:
        """Running rows with fallbacks that must shorten: their remaining steps would end after their
        deadline, or exceed their share of the queue-pressure cap (degrade.py), with the steps they keep."""
        fresh = {id(row) for row in admitted}  # just sized to fit at admission
        queued = len(self._queue)
        at_risk = []
        for row in running:
            floor = row.request.floor_steps
            if floor is None or id(row) in fresh:
                continue
            remaining = row.cursor + 1
            budgets = []
            deadline = row.request.deadline
            if deadline is not None:
                budgets.append(replan_budget(remaining, deadline - now, self.seconds_per_step))
            asked = (row.asked or row.request).steps
            if isinstance(asked, int):
                cap = pressure_cap(asked, floor, queued, self.num_slots, self.max_queue)
                budgets.append(pressure_budget(cap, remaining, row.num_steps))
            kept = [budget for budget in budgets if budget is not None]
            if kept:
                at_risk.append((row, min(kept)))
        return at_risk

    def _admit(self, now: float, dropped: list[tuple[RowState, EngineError]]) -> list[RowState]:
        admitted = []
        while self._queue and self._free:
            row = self._queue.popleft()
            late = (
                self._degrade(row, now)
                if row.request.fallbacks
                else _cannot_finish(row, now, self.seconds_per_step)
            )
            if late is not None:
                dropped.append((row, late))
                continue
            row.slot = heapq.heappop(self._free)
            row.status = RowStatus.RUNNING
            row.admitted_at = now
            self._running[row.slot] = row
            admitted.append(row)
        return admitted

    def _degrade(self, row: RowState, now: float) -> EngineError | None:
        """Admit a row with fallbacks at the option the load allows (degrade.choose_option); the
        error when not even its floor can finish before the deadline."""
        request = row.request
        options = request.options
        group = row.group if row.group is not None else GroupDecision()
        time_left = None if request.deadline is None else request.deadline - now
        chosen = choose_option(
            options,
            group.index,
            time_left,
            self.seconds_per_step,
            len(self._queue),
            self.num_slots,
            self.max_queue,
        )
        if chosen is None:
            floor = options[-1].steps
            needed = floor * self.seconds_per_step * DEADLINE_MARGIN
            left = max(time_left or 0.0, 0.0)
            return DeadlineExceeded(
                f"request {request.group_id!r} cannot finish even its floor of K={floor} steps before its "
                f"deadline (about {needed:.1f} s needed at the current load, {left:.1f} s left)"
            )
        index, reason = chosen
        if group.decided and index == group.index:
            reason = group.reason  # a sibling runs what the first admitted row of its request chose
        elif not group.decided:
            group.index, group.reason, group.decided = index, reason, True
        if index > 0 and reason is not None:
            row.degrade(options[index], reason)
        return None

    def release(self, row: RowState) -> None:
        """Free a row's slot (it finished, failed, or was dropped)."""
        if row.slot is None or self._running.get(row.slot) is not row:
            return
        del self._running[row.slot]
        heapq.heappush(self._free, row.slot)

    def evict_running(self) -> list[RowState]:
        """Every in-flight row leaves (its executor crashed); queued rows stay."""
        rows = self.running_rows()
        for row in rows:
            self.release(row)
        return rows

    def evict_all(self) -> list[RowState]:
        """Every row leaves, queued and in flight (the engine stops without draining)."""
        rows = [*self.evict_running(), *self._queue]
        self._queue.clear()
        return rows


def _cannot_finish(row: RowState, now: float, seconds_per_step: float) -> EngineError | None:
    """DeadlineExceeded when K steps at the measured iteration time end after the row's deadline."""
    deadline = row.request.deadline
    if deadline is None or seconds_per_step <= 0:
        return None
    needed = row.num_steps * seconds_per_step
    if now + needed <= deadline:
        return None
    return DeadlineExceeded(
        f"request {row.request.group_id!r} cannot finish K={row.num_steps} steps before its deadline "
        f"(about {needed:.1f} s needed at the current load, {max(deadline - now, 0.0):.1f} s left)"
    )


def _drop_reason(row: RowState, now: float) -> EngineError | None:
    request = row.request
    if row.cancel_requested:
        return Cancelled(f"request {request.group_id!r} was cancelled")
    if request.deadline is not None and now >= request.deadline:
        where = "in the queue" if row.status is RowStatus.QUEUED else f"after {row.steps_done} steps"
        return DeadlineExceeded(
            f"request {request.group_id!r} passed its deadline {where} (K={row.num_steps})"
        )
    return None
