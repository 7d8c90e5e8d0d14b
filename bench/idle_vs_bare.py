"""(c) One request on an idle server vs the fastest bare sampling loop, K=50.

    python -m bench.idle_vs_bare --repeats 20     # prints the (c) section of docs/performance.md

HTTP: loadtest.idle (POST /generate, PNG, to a fresh server with default settings unless given,
end-to-end as the client sees it). Bare: solo.sample in this process for the same K, class and seed,
with the fastest network setting a user could pick (bench.variants: threads × compiled × precision,
chosen by a short search first). The two alternate (HTTP, bare, HTTP, ...) so a slow spell on the shared
machine hits both alike; the medians are compared. The server's own Server-Timing total locates any gap
(engine time inside the server, so client minus it is the HTTP cost).

Why no Engine.generate in this process beside the bare loop (an earlier version had one): the engine's
thread and the bare loop's main thread would each own an OpenMP team, and with more OpenMP threads than
cores libgomp lets the teams sleep between parallel regions, so both readings slowed 2-6x (measured: the
bare loop at 3.41 s instead of 0.58 s). That is the penalty the server avoids by giving only its engine
thread a team (service.engine.threads.confine_to_one_thread); a benchmark process must avoid it too, so
every in-process reading here runs on the main thread alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.model import bundled_model
from bench.variants import Networks, Variant, variants
from loadtest import idle, report
from loadtest.idle import STEPS, WARMUP
from loadtest.machine import load_average
from service.engine.generation import GenerationSpec
from service.engine.solo import sample
from service.model.store import LoadedModel

BAR = 1.05  # HTTP median ÷ the fastest bare loop's median
SEARCH_RUNS = 3  # bare runs per setting when choosing the fastest
# Pause before and after each bare run: after its last parallel region an OpenMP team keeps spinning on
# its cores for a while before it sleeps, so a request sent the moment the bare loop ends (or a bare run
# started the moment a response arrives) shares the two cores with the other process's spinning team.
# Measured on the 2-core VM, 10 runs each: HTTP ÷ bare 1.149 back to back, 1.085 with 0.3 s pauses.
SETTLE_S = 0.3


@dataclass(frozen=True)
class IdleResult:
    steps: int
    http_s: list[float]
    server_s: list[float]  # the server's Server-Timing total of the same requests
    bare_s: list[float]
    load_average: tuple[float, float]
    best: Variant
    searched: list[tuple[Variant, float]]  # setting -> median bare seconds in the search
    settings: str

    @property
    def http_median(self) -> float:
        return statistics.median(self.http_s)

    @property
    def ratio(self) -> float:
        return self.http_median / statistics.median(self.bare_s)

    @property
    def met(self) -> bool:
        return self.ratio <= BAR

    def markdown(self) -> str:
        http, bare = statistics.median(self.http_s), statistics.median(self.bare_s)
        return "\n\n".join(
            [
                f"## (c) Idle single request vs the fastest bare loop ({self.settings})",
                f"The bare loop (`service.engine.solo.sample`, in the benchmark process) with each setting, "
                f"{SEARCH_RUNS} runs each, fastest first:",
                report.table(
                    ["Setting", f"median of {SEARCH_RUNS}"],
                    [(variant.label, report.seconds(seconds)) for variant, seconds in self.searched],
                ),
                f"K={self.steps}, one request at a time, alternating with the fastest bare loop "
                f"({self.best.label}). HTTP is end-to-end (client-measured, PNG response) against a server "
                f"({self.settings}) with nothing else in flight. "
                f"{WARMUP} warm-up runs of each are not counted; {SETTLE_S} s pauses before and after each "
                "bare run let the other process's OpenMP team stop spinning. Load average "
                f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(
                    ["Path", "runs", "median", "min", "max"],
                    [
                        idle.row("HTTP /generate, client end-to-end", self.http_s),
                        idle.row("  of which inside the server (Server-Timing total)", self.server_s),
                        idle.row(f"bare solo.sample, {self.best.label}", self.bare_s),
                    ],
                ),
                report.bar(
                    f"HTTP ≤ {BAR} × the fastest bare loop",
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


def run(
    model_dir: Path,
    model: LoadedModel,
    networks: Networks,
    *,
    repeats: int = 20,
    steps: int = STEPS,
    torch_threads: int | None = None,
    compile: bool | None = None,
    candidates: list[Variant] | None = None,
) -> IdleResult:
    load_start = load_average()
    searched = _search(networks, GenerationSpec(model.name, 0, steps, seed=0), candidates)
    best = searched[0][0]
    bare_model = networks.get(best, 1)

    def bare(i: int, label: int) -> float:
        """The fastest bare loop for request i's K, class and seed."""
        spec = GenerationSpec(model.name, label, steps, seed=i)
        before = torch.get_num_threads()
        torch.set_num_threads(best.threads)
        time.sleep(SETTLE_S)
        try:
            return _timed(partial(sample, bare_model, spec))
        finally:
            torch.set_num_threads(before)
            time.sleep(SETTLE_S)

    http = idle.run(
        model_dir, bare, repeats=repeats, steps=steps, torch_threads=torch_threads, compile=compile
    )
    return IdleResult(
        steps,
        http.http_s,
        http.server_s,
        http.alongside,
        (load_start, load_average()),
        best,
        searched,
        http.settings,
    )


def _search(
    networks: Networks, spec: GenerationSpec, candidates: list[Variant] | None = None
) -> list[tuple[Variant, float]]:
    """Median bare-loop seconds per setting (after one untimed run each), fastest first."""
    before = torch.get_num_threads()
    results = []
    try:
        for variant in candidates or variants():
            bare_model = networks.get(variant, 1)
            torch.set_num_threads(variant.threads)
            sample(bare_model, spec)
            runs = [_timed(partial(sample, bare_model, spec)) for _ in range(SEARCH_RUNS)]
            results.append((variant, statistics.median(runs)))
    finally:
        torch.set_num_threads(before)
    return sorted(results, key=lambda item: item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model_dir, model = bundled_model()
    print(run(model_dir, model, Networks(model_dir), repeats=args.repeats).markdown())


if __name__ == "__main__":
    main()
