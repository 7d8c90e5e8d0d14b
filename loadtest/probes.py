"""Readings taken from a running server while a driver loads it (same clock origin as the driver)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from loadtest.server import MetricsSnapshot, Server


@dataclass(frozen=True)
class Reading:
    at_s: float  # offset from the run's origin (time.perf_counter() at `start`)
    metrics: MetricsSnapshot
    rss_bytes: int
    cpu_s: float  # the server's CPU time so far
    driver_cpu_s: float  # this process's (the load generator's) CPU time so far


async def readings_at(server: Server, offsets: Sequence[float], start: float) -> list[Reading]:
    """/metrics and RSS at each offset; a scrape takes milliseconds, so its midpoint is its time."""
    readings = []
    async with httpx.AsyncClient(trust_env=False) as client:
        for offset in offsets:
            delay = offset - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            before = time.perf_counter()
            metrics = await server.metrics_async(client)
            rss, cpu = server.rss_bytes(), server.cpu_seconds()
            at = (before + time.perf_counter()) / 2 - start
            readings.append(Reading(at, metrics, rss, cpu, time.process_time()))
    return readings


def delta(first: Reading, last: Reading, name: str, **labels: str) -> float:
    return last.metrics.value(name, **labels) - first.metrics.value(name, **labels)
