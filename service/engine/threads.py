"""How many intra-op threads the engine thread gives the network, per batch size, measured on this machine.

Why per batch size: on a small CPU one thread is as fast or faster for a batch of one (the network's
ops are too small to split, and a second thread costs a fork/join per op), while a full batch runs up to
1.6x faster on two (measured on the 2-core development machines, see docs/performance.md). No single
setting is best for both, and the crossover depends on the CPU, so it is measured at warm-up: each
power-of-two batch size up to the largest is timed at every candidate count, and sizes in between take
the choice of the next measured size up. The engine thread then sets its own count before each call
(torch.set_num_threads is per calling thread under OpenMP and costs microseconds), only when it changes,
and keeps measuring while it serves (ThreadSetter), since the machine's load can change after warm-up.
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


def confine_to_one_thread() -> None:
    """Give the calling thread one intra-op thread: for every thread that runs torch ops but is not the
    engine's: the server's main thread, model loading, the background compiler's checks, Triton's stub.

    Why: under GNU OpenMP (torch's CPU wheels) each thread that runs a parallel op keeps a team of worker
    threads afterwards, and once the process holds more OpenMP threads than it has cores, libgomp stops
    spinning at barriers and puts workers to sleep between parallel regions. Every op of the engine's
    network then waits for a futex wake-up, and the team mostly runs one thread at a time. Measured on
    the 2-core development VM (issue 18; bench/thread_penalty.py shows it): the compiled batch-16 network
    called from a worker thread ran 17.5-19.8 calls/s after the main thread had run it with two threads,
    22.0-25.0 calls/s when the main thread had been confined to one, and 22.7-27.5 calls/s from the main
    thread itself.
    So only the engine thread may own a team.
    """
    torch.set_num_threads(1)


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
    """Applies a policy on the engine thread and keeps it honest while serving.

    A warm-up measurement is only as good as the moment it was taken: taken while another process held a
    core, it would keep one thread forever. So every call's network time is fed back (`after_call`), a
    moving average of seconds per row is kept per (size class, thread count), seeded from the warm-up,
    and one call in `explore_every` of a size class runs at the other candidate. The count used is the
    one with the lowest average; a changed machine moves it within a few hundred calls.
    """

    def __init__(
        self,
        policy: ThreadPolicy,
        candidates: Sequence[int] = (),
        explore_every: int = 64,
        alpha: float = 0.2,
    ) -> None:
        self.policy = policy
        self.candidates = sorted(set(candidates) or set(policy.threads))
        self.explore_every = explore_every
        self.alpha = alpha
        self.per_row: dict[tuple[int, int], float] = {}  # (size class, threads) -> seconds per row
        for rows, threads, seconds in policy.measured:
            self.per_row[(_size_class(rows), threads)] = seconds / rows
        self._calls: dict[int, int] = {}
        self._current = 0

    def before_call(self, rows: int) -> int:
        """Set the engine thread's count for a call of `rows` rows; returns the count used."""
        threads = self.choose(rows)
        if threads != self._current:
            torch.set_num_threads(threads)
            self._current = threads
        return threads

    def after_call(self, rows: int, threads: int, seconds: float) -> None:
        key = (_size_class(rows), threads)
        sample = seconds / max(rows, 1)
        old = self.per_row.get(key)
        self.per_row[key] = sample if old is None else (1 - self.alpha) * old + self.alpha * sample

    def forget(self, rows: int) -> None:
        """Drop what was measured for the size class of `rows` (its network changed, e.g. compiled):
        the warm-up policy applies again until the calls at each count are measured anew."""
        size = _size_class(rows)
        self.per_row = {key: value for key, value in self.per_row.items() if key[0] != size}
        self._calls[size] = 0

    def choose(self, rows: int) -> int:
        size = _size_class(rows)
        known = {t: self.per_row[(size, t)] for t in self.candidates if (size, t) in self.per_row}
        best = min(known, key=lambda t: (known[t], t)) if known else self.policy.for_rows(rows)
        count = self._calls[size] = self._calls.get(size, 0) + 1
        if len(self.candidates) > 1 and count % self.explore_every == 0:
            others = [t for t in self.candidates if t != best]
            return others[(count // self.explore_every - 1) % len(others)]
        return best


def _size_class(rows: int) -> int:
    """The power of two at or above `rows`: calls of similar size share an estimate."""
    return 1 << max(rows - 1, 0).bit_length()
