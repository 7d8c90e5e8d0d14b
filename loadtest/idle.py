"""(c) One request on an idle server vs the bare sampling loop, K=50.

HTTP: POST /generate (PNG) to a fresh default server, end-to-end as the client sees it. Bare: solo.sample
in this process for the same K, class and seed. The two alternate (HTTP, bare, HTTP, ...) so a slow spell
on the shared machine hits both alike; the medians are compared. Two more readings locate any gap: the
server's own Server-Timing total (engine time inside the server, so client minus it is the HTTP cost),
and Engine.generate in this process (the engine without HTTP or a second process).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from loadtest import report
from loadtest.machine import load_average, pin_threads, random_model
from loadtest.server import Server, ServerConfig
from service.engine.engine import Engine
from service.engine.request import make_rows
from service.engine.settings import EngineSettings
from service.engine.solo import SampleSpec, sample
from service.model.store import LoadedModel

STEPS = 50
BAR = 1.15  # HTTP median ÷ bare median
WARMUP = 2


@dataclass(frozen=True)
class IdleResult:
    steps: int
    http_s: list[float]
    server_s: list[float]  # the server's Server-Timing total of the same requests
    engine_s: list[float]  # Engine.generate in this process
    bare_s: list[float]
    load_average: tuple[float, float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.http_s) / statistics.median(self.bare_s)

    @property
    def met(self) -> bool:
        return self.ratio <= BAR

    def markdown(self) -> str:
        def row(name: str, values: list[float]) -> tuple[str, ...]:
            return (
                name,
                str(len(values)),
                report.seconds(statistics.median(values)),
                report.seconds(min(values)),
                report.seconds(max(values)),
            )

        http, bare = statistics.median(self.http_s), statistics.median(self.bare_s)
        return "\n\n".join(
            [
                "## (c) Idle single request vs the bare loop",
                f"K={self.steps}, one request at a time, alternating with the bare loop "
                f"(`service.engine.solo.sample`, in the benchmark process, 1 thread). HTTP is end-to-end "
                f"(client-measured, PNG response) against a default server with nothing else in flight. "
                f"{WARMUP} warm-up runs of each are not counted. Load average "
                f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(
                    ["Path", "runs", "median", "min", "max"],
                    [
                        row("HTTP /generate, client end-to-end", self.http_s),
                        row("  of which inside the server (Server-Timing total)", self.server_s),
                        row("Engine.generate in this process (no HTTP)", self.engine_s),
                        row("bare solo.sample", self.bare_s),
                    ],
                ),
                report.bar(
                    "HTTP ≤ 1.15 × bare loop",
                    self.met,
                    f"{report.seconds(http)} ÷ {report.seconds(bare)} = **{self.ratio:.3f}**; "
                    f"per step {(http - bare) / self.steps * 1000:+.2f} ms",
                ),
            ]
        )


def _server_total_s(response: httpx.Response) -> float:
    """The `total;dur=<ms>` entry of the Server-Timing header."""
    for entry in response.headers["server-timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if name == "total":
            return float(duration) / 1000
    raise ValueError(f"no total in Server-Timing: {response.headers['server-timing']}")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(model_dir: Path, model: LoadedModel, *, repeats: int = 20, steps: int = STEPS) -> IdleResult:
    load_start = load_average()
    http_s: list[float] = []
    server_s: list[float] = []
    engine_s: list[float] = []
    bare_s: list[float] = []
    # Sharing the network is safe here: on the CPU an fp32 executor neither casts nor compiles it, and the
    # engine and the bare loop never run at the same time.
    engine = Engine(model, EngineSettings())
    engine.start()
    try:
        if not engine.wait_ready(120):
            raise RuntimeError("the in-process engine did not warm up")
        with (
            Server(ServerConfig(model_dir)) as server,
            httpx.Client(base_url=server.base_url, trust_env=False) as http,
        ):
            for i in range(WARMUP + repeats):
                label = i % 10
                start = time.perf_counter()
                body = {"class_label": label, "steps": steps, "seed": i}
                response = http.post("/generate", json=body, timeout=120)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                rows = make_rows(f"idle-{i}", model.name, label, steps, seed=i)
                in_process = _timed(partial(engine.generate, rows, timeout=120))
                bare = _timed(partial(sample, model, SampleSpec(label, steps, seed=i)))
                if i >= WARMUP:
                    http_s.append(elapsed)
                    server_s.append(_server_total_s(response))
                    engine_s.append(in_process)
                    bare_s.append(bare)
    finally:
        engine.stop(drain=False)
    return IdleResult(steps, http_s, server_s, engine_s, bare_s, (load_start, load_average()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pin_threads()
    model_dir, model = random_model()
    print(run(model_dir, model, repeats=args.repeats).markdown())


if __name__ == "__main__":
    main()
