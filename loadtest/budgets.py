"""Latency budgets kept: `latency_budget_ms` requests at idle and at 50 % load, over HTTP.

A budget is a promise: the server picks the largest calibrated K it predicts will finish in time, or
answers 422 `target_unreachable` when none will. This scenario sends budget requests one at a time (each
waits for its answer), budgets drawn log-uniformly from [100 ms, 5 s] and 1..8 images (PNG grid), to a
fresh default server on the bundled, calibrated model:

- idle: nothing else in flight;
- 50 % load: meanwhile an open-loop Poisson stream of single-image requests (K uniform over
  throughput.MIX) offers half of the server's saturated throughput in images x steps per second
  (measured first in this run by closed-loop clients, unless given).

A request keeps its promise when its 200 arrives, as the client measures from sending to the last byte
(HTTP, PNG encoding, queueing and the batch it joined included), within its budget. A 422 is an honest
refusal, counted apart: it is not a miss, but every refusal is listed with the reason the server gave.

    python -m loadtest.budgets --requests 40          # prints the section of docs/performance.md
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest import driver, report, throughput
from loadtest.machine import load_average
from loadtest.server import Server, ServerConfig

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-small"
MIN_BUDGET_MS = 100.0
MAX_BUDGET_MS = 5000.0
MAX_IMAGES = 8
BAR = 0.95  # share of answered (200) budget requests that finish within their budget
LOAD_SHARE = 0.5


@dataclass(frozen=True)
class BudgetOutcome:
    budget_ms: float
    num_images: int
    status: int
    latency_ms: float  # client side: sent -> last byte
    steps: int | None  # K the server chose (X-Steps), for a 200
    detail: str = ""  # the server's message for anything but a 200

    @property
    def kept(self) -> bool:
        return self.status == 200 and self.latency_ms <= self.budget_ms


@dataclass(frozen=True)
class Phase:
    name: str
    outcomes: list[BudgetOutcome]
    load_average: tuple[float, float]
    background: driver.Tally | None = None  # the load stream's answers (50 % phase)
    offered_evals_per_s: float | None = None

    @property
    def answered(self) -> list[BudgetOutcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def kept_share(self) -> float:
        answered = self.answered
        return sum(o.kept for o in answered) / len(answered) if answered else math.nan

    @property
    def met(self) -> bool:
        return bool(self.answered) and self.kept_share >= BAR


@dataclass(frozen=True)
class BudgetResult:
    idle: Phase
    loaded: Phase
    saturation_evals_per_s: float

    @property
    def met(self) -> bool:
        return self.idle.met and self.loaded.met

    def markdown(self) -> str:
        parts = [
            "## Latency budgets kept",
            f"Bundled `fmnist-small` (calibrated), a fresh server with default settings per phase. Budget "
            f"requests one at a time, budgets log-uniform in [{MIN_BUDGET_MS:g}, {MAX_BUDGET_MS:g}] ms, "
            f"1..{MAX_IMAGES} images (one PNG), latency as the client sees it. At 50 % load an open-loop "
            f"Poisson stream offers {LOAD_SHARE:.0%} of the saturated throughput measured in this run "
            f"({self.saturation_evals_per_s:.0f} images·steps/s).",
        ]
        rows = []
        for phase in (self.idle, self.loaded):
            answered = phase.answered
            rows.append(
                (
                    phase.name,
                    str(len(phase.outcomes)),
                    str(len(answered)),
                    str(sum(o.kept for o in answered)),
                    str(sum(o.status == 422 for o in phase.outcomes)),
                    f"{phase.kept_share:.3f}",
                    "met" if phase.met else "**NOT met**",
                )
            )
        parts.append(
            report.table(
                ["Phase", "sent", "200", "within budget", "422 refused", "share kept", f"≥ {BAR}"], rows
            )
        )
        if self.loaded.background is not None and self.loaded.offered_evals_per_s is not None:
            b = self.loaded.background
            parts.append(
                f"Background stream at 50 % load: {self.loaded.offered_evals_per_s:.0f} images·steps/s "
                f"offered; {b.sent} requests, {b.count('200')} × 200, {b.count('429')} × 429, "
                f"{b.censored} censored."
            )
        misses = [(p.name, o) for p in (self.idle, self.loaded) for o in p.outcomes if not o.kept]
        if misses:
            parts.append("Misses and refusals:")
            parts.append(
                report.table(
                    ["Phase", "budget", "images", "status", "K", "took", "server said"],
                    [
                        (
                            name,
                            f"{o.budget_ms:.0f} ms",
                            str(o.num_images),
                            str(o.status),
                            "–" if o.steps is None else str(o.steps),
                            f"{o.latency_ms:.0f} ms",
                            o.detail[:110],
                        )
                        for name, o in misses
                    ],
                )
            )
        return "\n\n".join(parts)


def budgets(count: int, seed: int) -> list[tuple[float, int]]:
    """(budget_ms, num_images) pairs: budgets log-uniform, images uniform over 1..MAX_IMAGES."""
    rng = random.Random(seed)
    low, high = math.log(MIN_BUDGET_MS), math.log(MAX_BUDGET_MS)
    return [(math.exp(rng.uniform(low, high)), rng.randint(1, MAX_IMAGES)) for _ in range(count)]


async def _send_budgets(base_url: str, plan: list[tuple[float, int]], seed: int) -> list[BudgetOutcome]:
    outcomes = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, trust_env=False) as client:
        for i, (budget_ms, images) in enumerate(plan):
            body = {
                "class_label": i % driver.NUM_CLASSES,
                "latency_budget_ms": round(budget_ms, 1),
                "num_images": images,
                "seed": seed + i,
            }
            start = time.perf_counter()
            response = await client.post("/generate", json=body)
            latency_ms = (time.perf_counter() - start) * 1000
            steps = response.headers.get("x-steps")
            detail = "" if response.status_code == 200 else response.text
            chosen = None if steps is None else int(steps)
            status = response.status_code
            outcomes.append(BudgetOutcome(budget_ms, images, status, latency_ms, chosen, detail))
            await asyncio.sleep(0.05)  # a pause between requests, as separate users would leave
    return outcomes


def _idle(model_dir: Path, plan: list[tuple[float, int]], seed: int, compile: bool | None) -> Phase:
    start_load = load_average()
    with Server(ServerConfig(model_dir, max_num_images=MAX_IMAGES, compile=compile)) as server:
        _settle(server)
        outcomes = asyncio.run(_send_budgets(server.base_url, plan, seed))
    return Phase("idle", outcomes, (start_load, load_average()))


def _loaded(
    model_dir: Path, plan: list[tuple[float, int]], seed: int, saturation: float, compile: bool | None
) -> Phase:
    start_load = load_average()
    offered = LOAD_SHARE * saturation
    rate = offered / throughput.MEAN_K
    with Server(ServerConfig(model_dir, max_num_images=MAX_IMAGES, compile=compile)) as server:
        _settle(server)

        async def both() -> tuple[list[BudgetOutcome], list[driver.Outcome]]:
            # The stream runs for as long as the budget requests plausibly take, plus a margin; its own
            # wall cap bounds it whatever happens.
            duration = 8.0 + len(plan) * 1.5
            arrivals = driver.poisson_arrivals(rate, duration, throughput.MIX, seed, max_requests=100_000)
            stream = asyncio.create_task(
                driver.open_loop(server.base_url, arrivals, wall_cap_s=duration + 60, client_timeout_s=120)
            )
            await asyncio.sleep(5.0)  # the load reaches its steady state first
            outcomes = await _send_budgets(server.base_url, plan, seed)
            return outcomes, await stream

        outcomes, stream = asyncio.run(both())
    return Phase("50 % load", outcomes, (start_load, load_average()), driver.tally(stream), offered)


def _settle(server: Server) -> None:
    """A few plain requests first: the live step-time estimates the predictions use start from these,
    as they would on a server that has been up for a while."""
    with httpx.Client(base_url=server.base_url, timeout=120.0, trust_env=False) as client:
        for images in (1, 4, 8):
            body = {"class_label": 0, "steps": 10, "num_images": images}
            client.post("/generate", json=body).raise_for_status()


def run(
    model_dir: Path = BUNDLED_MODEL,
    *,
    requests: int = 40,
    seed: int = 7,
    saturation_evals_per_s: float | None = None,
    compile: bool | None = None,
) -> BudgetResult:
    """Both phases on fresh servers (default settings; `compile` only for tests on tiny models)."""
    if saturation_evals_per_s is None:
        served = throughput.run(model_dir, warmup_s=10.0, window_s=30.0, seed=seed, compile=compile)
        saturation_evals_per_s = served.served
    plan = budgets(requests, seed)
    idle = _idle(model_dir, plan, seed, compile)
    loaded = _loaded(model_dir, plan, seed + 1000, saturation_evals_per_s, compile)
    return BudgetResult(idle, loaded, saturation_evals_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="budget requests per phase")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="a calibrated model folder")
    parser.add_argument("--saturation", type=float, default=None, help="images·steps/s; default: measure")
    args = parser.parse_args()
    print(run(args.model, requests=args.requests, saturation_evals_per_s=args.saturation).markdown())


if __name__ == "__main__":
    main()
