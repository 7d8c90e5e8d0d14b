"""(c) One request on an idle server vs the bare sampling loop, K=50.

    python -m bench.idle_vs_bare --repeats 20     # prints the (c) section of docs/performance.md

HTTP: loadtest.idle (POST /generate, PNG, to a fresh default server, end-to-end as the client sees it).
Bare: solo.sample in this process for the same K, class and seed. The two alternate (HTTP, bare, HTTP,
...) so a slow spell on the shared machine hits both alike; the medians are compared. Two more readings
locate any gap: the server's own Server-Timing total (engine time inside the server, so client minus it
is the HTTP cost), and Engine.generate in this process (the engine without HTTP or a second process).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.model import random_model
from loadtest import idle, report
from loadtest.idle import STEPS, WARMUP
from loadtest.machine import load_average, pin_threads
from service.engine.engine import Engine
from service.engine.generation import GenerationSpec
from service.engine.settings import EngineSettings
from service.engine.solo import sample
from service.model.store import LoadedModel

BAR = 1.15  # HTTP median ÷ bare median


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
                        idle.row("HTTP /generate, client end-to-end", self.http_s),
                        idle.row("  of which inside the server (Server-Timing total)", self.server_s),
                        idle.row("Engine.generate in this process (no HTTP)", self.engine_s),
                        idle.row("bare solo.sample", self.bare_s),
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


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(model_dir: Path, model: LoadedModel, *, repeats: int = 20, steps: int = STEPS) -> IdleResult:
    load_start = load_average()
    # Sharing the network is safe here: on the CPU an fp32 executor neither casts nor compiles it, and the
    # engine and the bare loop never run at the same time.
    engine = Engine(model, EngineSettings())
    engine.start()

    def in_process(i: int, label: int) -> tuple[float, float]:
        """Engine.generate, then the bare loop, for request i's K, class and seed."""
        spec = GenerationSpec(model.name, label, steps, seed=i)
        in_engine = _timed(partial(engine.generate, spec, timeout=120))
        bare = _timed(partial(sample, model, spec))
        return in_engine, bare

    try:
        if not engine.wait_ready(120):
            raise RuntimeError("the in-process engine did not warm up")
        http = idle.run(model_dir, in_process, repeats=repeats, steps=steps)
    finally:
        engine.stop(drain=False)
    engine_s = [e for e, _ in http.alongside]
    bare_s = [b for _, b in http.alongside]
    return IdleResult(steps, http.http_s, http.server_s, engine_s, bare_s, (load_start, load_average()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pin_threads()
    model_dir, model = random_model()
    print(run(model_dir, model, repeats=args.repeats).markdown())


if __name__ == "__main__":
    main()
