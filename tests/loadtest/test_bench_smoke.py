"""The HTTP harness against a real ddpm-serve on the tiny-test model: bookkeeping, not speed.

Every request must end with exactly one record, the counts must add up, and the server's own counters
must agree with what the client saw. Nothing here asserts on timings. (The in-process halves of the
benchmarks are smoke-tested in tests/bench/.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest import driver, idle, raw_ceiling
from loadtest.driver import Arrival, Outcome
from loadtest.server import Server, ServerConfig

TIMEOUT_MS = 2000
# K=1000 takes seconds on the tiny model: such requests fill the 2 slots and the queue of 2 (429s) and
# some pass their 2 s deadline (504s), while K=2 ones finish (200s).
MIX = {2: 2.0, 20: 1.0, 1000: 1.0}


@pytest.mark.slow
def test_driver_accounts_for_every_request(tiny_model_dir: Path) -> None:
    config = ServerConfig(tiny_model_dir, max_batch=2, max_queue=2, warmup_iterations=1, compile=False)
    arrivals = driver.poisson_arrivals(8.0, 3.0, MIX, seed=0, max_requests=40)
    assert 0 < len(arrivals) <= 40 and arrivals[-1].at_s < 3.0
    with Server(config) as server:
        outcomes = asyncio.run(
            driver.open_loop(
                server.base_url, arrivals, wall_cap_s=20.0, client_timeout_s=15.0, timeout_ms=TIMEOUT_MS
            )
        )
        counters = server.metrics()
        # One request that cannot finish before the wall cap: the driver cancels it and says so.
        censored = asyncio.run(
            driver.open_loop(server.base_url, [Arrival(0, 0.0, 1000)], wall_cap_s=0.5, client_timeout_s=15.0)
        )
        assert server.stop() == 0  # drained and exited cleanly after the cancelled request

    assert [o.index for o in outcomes] == [a.index for a in arrivals]
    tally = driver.tally(outcomes)
    print(f"smoke run: {tally.sent} requests, {tally.kinds}")  # shown with -s; which kinds occur varies
    assert tally.consistent and tally.sent == len(arrivals) and tally.duplicates == 0
    assert tally.client_errors == 0 and tally.censored == 0 and tally.non_terminal_http == 0
    assert tally.count("200") + tally.count("429") + tally.count("504") == len(arrivals)
    assert tally.count("200") > 0
    for kind, label in (("200", "ok"), ("429", "queue_full"), ("504", "deadline_exceeded")):
        assert counters.value("ddpm_requests_total", status=label) == tally.count(kind), kind

    assert len(censored) == 1 and censored[0].censored and censored[0].kind == "censored"
    assert driver.tally(censored).consistent


def _outcome(index: int, latency: float, status: int | None = 200, censored: bool = False) -> Outcome:
    return Outcome(index, 10, 0.0, 0.0, latency, latency, status=status, censored=censored)


def test_percentile_marks_censored_lower_bounds() -> None:
    done = [_outcome(i, float(i + 1)) for i in range(10)]  # 1 .. 10 s
    assert driver.percentile(done, 50) == driver.Percentile(5.0, False)
    assert driver.percentile(done, 99) == driver.Percentile(10.0, False)
    # A censored request above the median leaves it exact; one below makes it a lower bound.
    assert driver.percentile([*done, _outcome(10, 20.0, None, True)], 50) == driver.Percentile(6.0, False)
    assert driver.percentile([*done, _outcome(10, 2.5, None, True)], 50) == driver.Percentile(5.0, True)
    # 429s and client errors have no latency to rank.
    assert driver.percentile([_outcome(0, 0.01, 429)], 50) is None


@pytest.mark.slow
def test_idle_calls_alongside_after_every_request(tiny_model_dir: Path) -> None:
    seen: list[tuple[int, int]] = []

    def alongside(i: int, label: int) -> int:
        seen.append((i, label))
        return 100 + i

    result = idle.run(tiny_model_dir, alongside, repeats=2, steps=2, compile=False)
    assert seen == [(i, i % 10) for i in range(idle.WARMUP + 2)]  # warm-up runs too, in order
    assert result.alongside == [100 + idle.WARMUP, 101 + idle.WARMUP]  # only the counted ones
    assert len(result.http_s) == len(result.server_s) == 2
    assert all(0 < inside <= client for inside, client in zip(result.server_s, result.http_s, strict=True))
    assert "Idle single request over HTTP" in result.markdown()


@pytest.mark.slow
def test_raw_ceiling_comes_from_bench_in_a_child_process(tiny_model_dir: Path) -> None:
    assert raw_ceiling.evals_per_s_median(tiny_model_dir, batch=2, calls=2) > 0
