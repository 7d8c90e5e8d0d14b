"""How many intra-op threads the engine thread gives the network, per batch size, measured on this machine.

Why per batch size: on a small CPU one thread is as fast or faster for a batch of one (the network's
ops are too small to split, and a second thread costs a fork/join per op), while a full batch runs up to
1.6x faster on two (measured on the 2-core development machines, see docs/performance.md). No single
setting is best for both, and the crossover depends on the CPU, so it is measured at warm-up: each
power-of-two batch size up to the largest is timed at every candidate count, and sizes in between take
the choice of the next measured size up. The engine thread then sets its own count before each call
(torch.set_num_threads is per calling thread under OpenMP and costs microseconds), only when it changes.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadPolicy:
    """threads[n - 1] is the intra-op thread count for a batch of n rows."""

    threads: tuple[int, ...]
    measured: tuple[tuple[int, int, float], ...] = ()  # (rows, threads, seconds per call), for the log

    def for_rows(self, rows: int) -> int:
        return self.threads[min(rows, len(self.threads)) - 1]

    @classmethod
    def fixed(cls, threads: int, max_rows: int) -> ThreadPolicy:
        return cls((threads,) * max_rows)


def machine_threads() -> int:
    """The cores this process may run on (its CPU affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def tune(
    run: Callable[[int], object],
    max_rows: int,
    candidates: Sequence[int] | None = None,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> ThreadPolicy:
    """Time `run(rows)` at each power-of-two size up to max_rows (and max_rows) for each candidate
    thread count; the median of `repeats` calls per count, after one untimed call, decides."""
    candidates = sorted(set(candidates or range(1, machine_threads() + 1)))
    before = torch.get_num_threads()
    sizes = sorted({*(2**i for i in range(max_rows.bit_length()) if 2**i <= max_rows), max_rows})
    best: dict[int, int] = {}
    measured: list[tuple[int, int, float]] = []
    try:
        for rows in sizes:
            calls: dict[int, list[float]] = {threads: [] for threads in candidates}
            for threads in candidates:  # one untimed call each: first-call allocations, cache warm-up
                torch.set_num_threads(threads)
                run(rows)
            # Candidates alternate call by call, so a burst of other work on the machine hits all alike.
            for _ in range(repeats):
                for threads in candidates:
                    torch.set_num_threads(threads)
                    start = clock()
                    run(rows)
                    calls[threads].append(clock() - start)
            timings = {threads: statistics.median(times) for threads, times in calls.items()}
            measured += [(rows, threads, seconds) for threads, seconds in timings.items()]
            best[rows] = min(timings, key=lambda t: (timings[t], t))  # ties: fewer threads
    finally:
        torch.set_num_threads(before)
    table = tuple(best[next(s for s in sizes if s >= n)] for n in range(1, max_rows + 1))
    return ThreadPolicy(table, tuple(measured))


class ThreadSetter:
    """Applies a policy on the engine thread, calling torch only when the count changes."""

    def __init__(self, policy: ThreadPolicy) -> None:
        self.policy = policy
        self._current = 0

    def before_call(self, rows: int) -> None:
        threads = self.policy.for_rows(rows)
        if threads != self._current:
            torch.set_num_threads(threads)
            self._current = threads
