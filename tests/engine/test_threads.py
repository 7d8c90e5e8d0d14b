"""Threads per batch size: the tuner picks the fastest count for each size from its own measurements."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from service.engine.threads import ThreadPolicy, ThreadSetter, confine_to_one_thread, tune


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeNetwork:
    """A call costs what a small CPU measures: one thread wins at one row, two threads win from two."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __call__(self, rows: int) -> None:
        threads = torch.get_num_threads()
        per_row = 0.010 if threads == 1 else 0.006
        self.now += rows * per_row + (0.005 if threads > 1 else 0.0)  # a fork/join per call


def test_the_tuner_picks_per_size_and_fills_the_sizes_between() -> None:
    network = FakeNetwork()
    policy = tune(network, 12, candidates=[1, 2], clock=network.clock)
    # 1 row: 10 ms on one thread vs 11 ms on two; 2 rows: 20 vs 17: two threads from there on.
    assert policy.threads == (1,) + (2,) * 11
    assert {rows for rows, _, _ in policy.measured} == {1, 2, 4, 8, 12}
    assert policy.for_rows(1) == 1 and policy.for_rows(3) == 2 and policy.for_rows(99) == 2


def test_ties_go_to_fewer_threads_and_fixed_policies() -> None:
    def run(rows: int) -> None:
        pass

    ticks = iter(range(10_000))
    assert tune(run, 4, candidates=[1, 2], clock=lambda: float(next(ticks))).threads == (1, 1, 1, 1)
    assert ThreadPolicy.fixed(3, 4).threads == (3, 3, 3, 3)


def test_the_setter_changes_torch_only_when_the_count_changes() -> None:
    setter = ThreadSetter(ThreadPolicy((1, 2, 2)))
    setter.before_call(1)
    assert torch.get_num_threads() == 1
    setter.before_call(3)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # someone else changed it: the setter trusts its own record
    setter.before_call(2)
    assert torch.get_num_threads() == 1


def test_serving_corrects_a_policy_measured_while_the_machine_was_busy() -> None:
    # Warm-up ran while another process held a core: one thread looked best at 4 rows (20 vs 30 ms).
    busy = ThreadPolicy((1, 1, 1, 1), measured=((4, 1, 0.020), (4, 2, 0.030)))
    setter = ThreadSetter(busy, candidates=[1, 2], explore_every=8)
    now = {1: 0.020, 2: 0.012}  # the other process has finished: two threads are faster now
    used = []
    for _ in range(200):
        threads = setter.before_call(4)
        used.append(threads)
        setter.after_call(4, threads, now[threads])
    assert used[0] == 1  # the warm-up's choice first
    # It explored, saw the change and switched: from then on one thread runs only as exploration.
    assert used[-50:].count(1) <= 50 // 8 + 1 and used[-50:].count(2) >= 50 - (50 // 8 + 1)


def test_confining_a_thread_leaves_the_engine_threads_count_alone() -> None:
    # The fix for the sleeping OpenMP team relies on the count being per thread: the loader, the
    # compiler's checks and the event loop give up their teams while the engine thread keeps its own.
    torch.set_num_threads(2)  # keep_threads restores the count afterwards
    seen: dict[str, int] = {}

    def other_thread() -> None:
        confine_to_one_thread()
        seen["confined"] = torch.get_num_threads()

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen["confined"] == 1
    assert torch.get_num_threads() == 2
