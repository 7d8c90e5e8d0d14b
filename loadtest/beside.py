"""A short request beside long ones: K=10 sent while eight K=250 requests are in flight, over HTTP.

Continuous batching promises that a short request does not wait for long ones: it joins their batch at
the next step and leaves after its own K steps, so its latency is about K iterations at the batch it
joined (9 rows here). `bench.beside` divides the measured latency by 10 × the raw forward time at 9 rows.

    python -m loadtest.beside --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.machine import random_model_dir
from loadtest.server import Server, ServerConfig

SHORT_K = 10
LONG_K = 250
LONG_REQUESTS = 8
SETTLE_S = 1.0  # after sending the long requests: every one of them is admitted and stepping


@dataclass(frozen=True)
class BesideRun:
    latencies_s: list[float]  # the K=10 requests, client side
    server_s: list[float]  # their Server-Timing totals
    long_ok: int  # long requests answered 200 (all must be)
    settings: str

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies_s)


async def _one(client: httpx.AsyncClient, seed: int) -> tuple[float, float, int]:
    long = [
        asyncio.create_task(
            client.post("/generate", json={"class_label": i, "steps": LONG_K, "seed": seed + i})
        )
        for i in range(LONG_REQUESTS)
    ]
    await asyncio.sleep(SETTLE_S)
    start = time.perf_counter()
    response = await client.post("/generate", json={"class_label": 9, "steps": SHORT_K, "seed": seed})
    latency = time.perf_counter() - start
    response.raise_for_status()
    server = float(response.headers["server-timing"].split("total;dur=")[1]) / 1000
    answers = await asyncio.gather(*long)
    return latency, server, sum(r.status_code == 200 for r in answers)


def run(model_dir: Path, *, repeats: int = 5, torch_threads: int | None = None) -> BesideRun:
    config = ServerConfig(model_dir, torch_threads=torch_threads)
    latencies, servers, long_ok = [], [], 0
    with Server(config) as server:

        async def all_runs() -> None:
            nonlocal long_ok
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300.0, trust_env=False) as client:
                await client.post("/generate", json={"class_label": 0, "steps": SHORT_K})  # warm-up
                for i in range(repeats):
                    latency, in_server, ok = await _one(client, 100 * i)
                    latencies.append(latency)
                    servers.append(in_server)
                    long_ok += ok

        asyncio.run(all_runs())
    return BesideRun(latencies, servers, long_ok, config.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = run(random_model_dir(), repeats=args.repeats)
    print(f"K={SHORT_K} beside {LONG_REQUESTS} x K={LONG_K}: median {result.median_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
