"""(c) One request at a time on an idle server, K=50, over HTTP.

POST /generate (PNG) to a fresh default server, end-to-end as the client sees it, next to the server's own
Server-Timing total of the same request (engine time inside the server, so client minus it is the HTTP
cost). After each request `run` calls `alongside(i, class label)`: a no-op when this runs alone, while
bench/idle_vs_bare.py passes the bare sampling loop for the same K, class and seed,
timed in its own process, so that the paths alternate (HTTP, bare, HTTP, ...) and a slow spell on the
shared machine hits both alike. This module never imports the engine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import httpx

from loadtest import report
from loadtest.machine import load_average, random_model_dir
from loadtest.server import Server, ServerConfig

STEPS = 50
WARMUP = 2
T = TypeVar("T")


@dataclass(frozen=True)
class IdleRun(Generic[T]):
    steps: int
    http_s: list[float]
    server_s: list[float]  # the server's Server-Timing total of the same requests
    alongside: list[T]  # what `alongside` returned for each counted request
    load_average: tuple[float, float]
    settings: str = "defaults"

    def markdown(self) -> str:
        """The HTTP side alone (the (c) section of docs/performance.md adds the bare loop)."""
        http, server = statistics.median(self.http_s), statistics.median(self.server_s)
        return "\n\n".join(
            [
                "## Idle single request over HTTP",
                f"K={self.steps}, one request at a time, end-to-end (client-measured, PNG response) against "
                f"a default server with nothing else in flight. {WARMUP} warm-up runs are not counted. Load "
                f"average {self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(
                    ["Path", "runs", "median", "min", "max"],
                    [
                        row("HTTP /generate, client end-to-end", self.http_s),
                        row("  of which inside the server (Server-Timing total)", self.server_s),
                    ],
                ),
                f"Outside the server (HTTP, PNG, loopback): {report.seconds(http - server)} per request.",
            ]
        )


def row(name: str, values: list[float]) -> tuple[str, ...]:
    """A table row: runs, median, min and max of some timings."""
    return (
        name,
        str(len(values)),
        report.seconds(statistics.median(values)),
        report.seconds(min(values)),
        report.seconds(max(values)),
    )


def server_total_s(response: httpx.Response) -> float:
    """The `total;dur=<ms>` entry of the Server-Timing header."""
    for entry in response.headers["server-timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if name == "total":
            return float(duration) / 1000
    raise ValueError(f"no total in Server-Timing: {response.headers['server-timing']}")


def run(
    model_dir: Path,
    alongside: Callable[[int, int], T],
    *,
    repeats: int = 20,
    steps: int = STEPS,
    torch_threads: int | None = None,
    compile: bool | None = None,
) -> IdleRun[T]:
    """WARMUP + repeats requests to a fresh server (default settings unless threads / compile are given),
    each followed by `alongside(i, class label)`."""
    load_start = load_average()
    http_s: list[float] = []
    server_s: list[float] = []
    extra: list[T] = []
    config = ServerConfig(model_dir, torch_threads=torch_threads, compile=compile)
    with (
        Server(config) as server,
        httpx.Client(base_url=server.base_url, trust_env=False) as http,
    ):
        for i in range(WARMUP + repeats):
            label = i % 10
            start = time.perf_counter()
            body = {"class_label": label, "steps": steps, "seed": i}
            response = http.post("/generate", json=body, timeout=120)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            other = alongside(i, label)
            if i >= WARMUP:
                http_s.append(elapsed)
                server_s.append(server_total_s(response))
                extra.append(other)
    return IdleRun(steps, http_s, server_s, extra, (load_start, load_average()), config.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(run(random_model_dir(), lambda i, label: None, repeats=args.repeats).markdown())


if __name__ == "__main__":
    main()
