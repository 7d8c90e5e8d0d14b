"""Scheduler policy with a fake executor and a fake clock: no torch, no model, no threads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.engine.errors import Cancelled, DeadlineExceeded, EngineError, InvalidRequest, QueueFull
from service.engine.request import Request, RowState, RowStatus
from service.engine.scheduler import Scheduler


def make_rows(group: str, n: int, deadline: float | None) -> list[Request]:
    """What GenerationSpec.rows makes (that module imports torch; this one must not)."""
    return [Request(f"{group}/{i}", group, "m", 0, 5, image_index=i, deadline=deadline) for i in range(n)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Advances every running row one step per iteration (one time unit); records who finished when."""

    def __init__(self, slots: int = 2, max_queue: int = 8, run_to_completion: bool = False) -> None:
        self.clock = FakeClock()
        self.scheduler = Scheduler(slots, max_queue, run_to_completion=run_to_completion, clock=self.clock)
        self.finished: list[tuple[str, int]] = []  # (request_id, iteration)
        self.dropped: list[tuple[str, EngineError]] = []
        self.iteration = 0

    def submit(self, group: str, k: int, n: int = 1, deadline: float | None = None) -> list[RowState]:
        rows = [RowState(r, k) for r in make_rows(group, n, deadline)]
        self.scheduler.add(rows)
        return rows

    def step(self) -> None:
        plan = self.scheduler.schedule()
        self.dropped += [(row.request.request_id, error) for row, error in plan.dropped]
        slots = [row.slot for row in plan.running]
        assert len(set(slots)) == len(slots) and all(s is not None for s in slots)
        for row in plan.running:
            row.cursor -= 1
            if row.cursor < 0:
                self.scheduler.release(row)
                self.finished.append((row.request.request_id, self.iteration))
        self.iteration += 1
        self.clock.now += 1.0

    def run(self, iterations: int | None = None) -> None:
        count = 0
        while self.scheduler.has_work and (iterations is None or count < iterations):
            self.step()
            count += 1

    def order(self) -> list[str]:
        return [request_id for request_id, _ in self.finished]


def test_fcfs_admission_into_free_slots() -> None:
    fake = FakeExecutor(slots=2)
    a, b, c = (fake.submit(group, 3)[0] for group in "abc")
    fake.step()
    assert (a.slot, b.slot, c.slot) == (0, 1, None)
    assert fake.scheduler.load().queue_depth == 1 and fake.scheduler.in_flight == 2
    fake.run()
    assert fake.order() == ["a/0", "b/0", "c/0"]
    assert c.slot == 0 and c.admitted_at == 3.0  # admitted as soon as a slot was free, into the lowest one


def test_rows_of_a_request_are_admitted_in_image_order() -> None:
    fake = FakeExecutor(slots=2)
    rows = fake.submit("g", 2, n=3)
    fake.run()
    assert fake.order() == ["g/0", "g/1", "g/2"]
    assert [row.slot for row in rows] == [0, 1, 0]


def test_queue_limit_raises_queue_full_and_queues_nothing_of_that_request() -> None:
    fake = FakeExecutor(slots=1, max_queue=3)
    fake.submit("a", 5, n=2)
    with pytest.raises(QueueFull) as info:
        fake.submit("b", 5, n=2)
    assert info.value.retry_after > 0
    assert fake.scheduler.queue_depth == 2
    fake.submit("c", 5, n=1)  # still fits
    with pytest.raises(InvalidRequest):
        fake.submit("d", 5, n=4)  # could never fit


def test_expired_queued_rows_fail_before_admission() -> None:
    fake = FakeExecutor(slots=1)
    fake.submit("long", 10)
    (late,) = fake.submit("late", 10, deadline=2.0)
    fake.run()
    assert [(rid, type(e)) for rid, e in fake.dropped] == [("late/0", DeadlineExceeded)]
    assert late.slot is None and late.admitted_at is None and "queue" in str(fake.dropped[0][1])
    assert fake.order() == ["long/0"]


def test_rows_that_cannot_finish_before_their_deadline_are_failed_at_admission() -> None:
    """With a measured iteration time, a row needing K steps past its deadline never takes a slot."""
    fake = FakeExecutor(slots=1)
    fake.scheduler.seconds_per_step = 1.0  # one fake time unit per iteration, as the fake executor runs
    (hopeless,) = fake.submit("hopeless", 10, deadline=5.0)
    (feasible,) = fake.submit("feasible", 4, deadline=5.0)
    fake.run()
    assert [(rid, type(e)) for rid, e in fake.dropped] == [("hopeless/0", DeadlineExceeded)]
    assert "cannot finish K=10 steps" in str(fake.dropped[0][1]) and hopeless.slot is None
    assert feasible.admitted_at == 0.0 and fake.order() == ["feasible/0"]


def test_unknown_iteration_time_admits_everything() -> None:
    fake = FakeExecutor(slots=1)
    (row,) = fake.submit("r", 10, deadline=50.0)
    fake.run()
    assert fake.order() == ["r/0"] and row.admitted_at == 0.0


def test_in_flight_rows_past_their_deadline_are_failed_and_free_their_slot() -> None:
    fake = FakeExecutor(slots=1)
    (slow,) = fake.submit("slow", 100, deadline=5.0)
    (next_,) = fake.submit("next", 3)
    fake.run()
    assert [(rid, type(e)) for rid, e in fake.dropped] == [("slow/0", DeadlineExceeded)]
    assert slow.steps_done == 5
    assert next_.admitted_at == 5.0  # took the freed slot in the same iteration
    assert fake.order() == ["next/0"]


def test_cancel_removes_queued_and_in_flight_rows_at_the_next_iteration() -> None:
    fake = FakeExecutor(slots=1)
    fake.submit("x", 50, n=2)
    (other,) = fake.submit("other", 3)
    fake.step()
    assert fake.scheduler.cancel("x") == 2
    assert fake.scheduler.cancel("x") == 0  # already marked
    assert fake.scheduler.cancel("unknown") == 0
    fake.run()
    assert sorted((rid, type(e)) for rid, e in fake.dropped) == [("x/0", Cancelled), ("x/1", Cancelled)]
    assert fake.order() == ["other/0"]
    assert other.admitted_at == 1.0  # the cancelled in-flight row ran one step only


@pytest.mark.parametrize("run_to_completion", [False, True])
def test_short_request_waits_for_a_long_one_only_in_run_to_completion_mode(run_to_completion: bool) -> None:
    fake = FakeExecutor(slots=2, run_to_completion=run_to_completion)
    fake.submit("k1000", 1000)
    fake.run(5)
    fake.submit("k10", 10)
    fake.run()
    if run_to_completion:
        assert fake.order() == ["k1000/0", "k10/0"]
        assert dict(fake.finished)["k10/0"] == 1000 + 10 - 1
    else:
        assert fake.order() == ["k10/0", "k1000/0"]
        assert dict(fake.finished)["k10/0"] == 5 + 10 - 1


def test_run_to_completion_admits_a_full_batch_into_an_empty_executor() -> None:
    fake = FakeExecutor(slots=2, run_to_completion=True)
    fake.submit("a", 2)
    fake.submit("b", 6)
    fake.submit("c", 2)
    fake.step()
    assert fake.scheduler.in_flight == 2 and fake.scheduler.queue_depth == 1
    fake.run(2)  # a finished, its slot stays empty until b does
    assert fake.scheduler.in_flight == 1 and fake.scheduler.queue_depth == 1
    fake.run()
    assert fake.order() == ["a/0", "b/0", "c/0"]


def test_evictions_and_load_figures() -> None:
    fake = FakeExecutor(slots=2)
    fake.submit("a", 5, n=3)
    fake.step()
    load = fake.scheduler.load()
    assert (load.queue_depth, load.in_flight, load.free_slots, load.total) == (1, 2, 0, 3)
    evicted = fake.scheduler.evict_running()
    assert [row.request.image_index for row in evicted] == [0, 1]
    assert fake.scheduler.load().free_slots == 2 and fake.scheduler.queue_depth == 1
    assert len(fake.scheduler.evict_all()) == 1 and not fake.scheduler.has_work


def test_backlog_counts_queued_steps_and_the_remaining_steps_of_running_rows() -> None:
    fake = FakeExecutor(slots=2)
    assert fake.scheduler.load().backlog_steps == 0
    fake.submit("a", 5, n=2)
    fake.submit("b", 10)
    assert fake.scheduler.load().backlog_steps == 5 + 5 + 10
    fake.step()  # a/0 and a/1 run one step each; b waits
    fake.step()
    assert fake.scheduler.load().backlog_steps == 3 + 3 + 10
    fake.run()
    assert fake.scheduler.load().backlog_steps == 0


def test_row_state_walks_its_cursor_down() -> None:
    (request,) = make_rows("g", 1, None)
    state = RowState(request, 10)
    assert (state.cursor, state.steps_done, state.status) == (9, 0, RowStatus.QUEUED)
    state.cursor = 3
    assert state.steps_done == 6 and not state.is_terminal


def test_scheduler_and_request_do_not_import_torch() -> None:
    code = "import sys, service.engine.scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
