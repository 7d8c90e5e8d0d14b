"""Freed heap memory goes back to the OS once the engine idles: once per idle period, never while busy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.engine.heap import HeapTrimmer, glibc_malloc_trim
from service.model.store import LoadedModel

glibc = pytest.mark.skipif(glibc_malloc_trim() is None, reason="needs glibc's malloc_trim")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_once_per_idle_period_and_only_after_the_idle_threshold() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    clock = Clock()
    heap = HeapTrimmer(trim=trim, min_idle_s=0.5, clock=clock)
    heap.busy()
    clock.now += 0.2
    heap.idle()
    assert calls == []  # idle, but not for long enough: a short gap between requests pays nothing
    clock.now += 0.4
    heap.idle()
    heap.idle()
    assert calls == [0] and heap.trims == 1  # one trim per idle period, with no padding kept
    heap.busy()
    clock.now += 10
    heap.idle()
    assert heap.trims == 2


def test_a_failing_trim_is_disabled_not_raised() -> None:
    def broken(pad: int) -> int:
        raise OSError("no such symbol")

    heap = HeapTrimmer(trim=broken, min_idle_s=0.0)
    heap.idle()
    assert not heap.available and heap.trims == 0
    heap.busy()
    heap.idle()  # not tried again


def rss_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * 4096


@glibc
def test_malloc_trim_returns_freed_small_allocations_to_the_os() -> None:
    # 96 MiB in 32 KiB blocks (below glibc's mmap threshold, so they live in the heap), then all but the
    # last freed: the last one pins the top of the heap, so without a trim glibc keeps every page.
    blocks = [bytearray(32 * 1024) for _ in range(3072)]
    keep = blocks[-1]
    before = rss_bytes()
    del blocks[:-1]
    after_free = rss_bytes()
    trim = glibc_malloc_trim()
    assert trim is not None
    trim(0)
    after_trim = rss_bytes()
    assert before - after_trim > 64 * 2**20, (before, after_free, after_trim)
    assert after_free - after_trim > 32 * 2**20, (before, after_free, after_trim)
    del keep


@glibc
def test_the_engine_trims_after_its_work_when_idle(tiny_model: LoadedModel) -> None:
    from service.engine.engine import Engine
    from service.engine.generation import GenerationSpec
    from service.engine.settings import EngineSettings

    def trims_reach(count: int) -> bool:
        deadline = time.monotonic() + 10
        while engine.heap.trims < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return engine.heap.trims == count

    engine = Engine(tiny_model, EngineSettings(max_batch=2, warmup_iterations=1))
    engine.start()
    try:
        assert engine.wait_ready(60)
        assert trims_reach(1)  # idle after warm-up (its buffers freed)
        time.sleep(1.2)
        assert engine.heap.trims == 1  # still idle: no second trim until there has been work again
        engine.generate(GenerationSpec(tiny_model.name, 1, 3, 1), 60)
        assert trims_reach(2)
    finally:
        engine.stop(drain=False, timeout=60)
