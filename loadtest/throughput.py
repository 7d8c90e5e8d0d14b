"""(a) Served throughput at saturation over HTTP, mixed K in {10, 25, 50, 100}.

Saturation by closed-loop clients (twice as many as slots, so a queue is always waiting and no slot
idles), rather than open-loop arrivals above capacity: those would end in 429s once the queue fills, and
the rejected requests would only add noise to a throughput figure. Served throughput counts UNet
evaluations = the sum of K over images answered 200 inside the measurement window, divided by the window;
the server's own counter (ddpm_unet_evaluations_total) over the same window is the cross-check, and the
server's CPU time over the window gives the same per CPU-second.

This is the HTTP half of bar (a): `python -m bench.served_vs_ceiling` times the raw UNet ceiling in its
own process before and after this run and divides (bench/ imports this module; it never imports bench).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import driver, probes, report
from loadtest.driver import Outcome, Tally
from loadtest.machine import load_average, pin_threads, random_model_dir
from loadtest.server import Server, ServerConfig

MIX = {10: 1.0, 25: 1.0, 50: 1.0, 100: 1.0}
MEAN_K = statistics.fmean(MIX)  # the mix is uniform


@dataclass(frozen=True)
class Served:
    max_batch: int
    concurrency: int
    warmup_s: float
    window_s: float
    completed: int  # 200s that finished inside the window
    client_evals: int  # their sum of K
    server_evals: float
    server_batches: float
    occupancy_sum: float
    step_seconds_sum: float
    tally: Tally
    server_cpu_s: float  # CPU time the server process used over the window
    driver_cpu_s: float  # CPU time the load generator (this process) used over the window
    load_average: tuple[float, float]
    settings: str = "defaults"  # the server's settings, as ServerConfig.describe says

    @property
    def served(self) -> float:
        return self.client_evals / self.window_s

    @property
    def served_by_counter(self) -> float:
        return self.server_evals / self.window_s

    @property
    def served_per_cpu_s(self) -> float:
        return self.server_evals / self.server_cpu_s

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.window_s

    def markdown(self) -> str:
        """The HTTP side alone (the (a) section of docs/performance.md adds the raw ceiling)."""
        rows = [
            (
                "Served, client side (Σ K of 200s finished in the window ÷ window)",
                f"{self.served:.1f}",
                f"{self.completed} images, {self.requests_per_s:.2f} req/s",
            ),
            (
                "Served, server counter (Δ `ddpm_unet_evaluations_total` ÷ window)",
                f"{self.served_by_counter:.1f}",
                f"{self.server_batches:.0f} batched UNet calls",
            ),
            (
                "Served per server CPU-second (Δ evaluations ÷ Δ its utime + stime)",
                f"{self.served_per_cpu_s:.1f}",
                f"{self.server_cpu_s / self.window_s:.3f} of a core",
            ),
            (
                "Mean rows per UNet call (Δ evaluations ÷ Δ `ddpm_unet_batches_total`)",
                f"{self.server_evals / self.server_batches:.2f}",
                f"occupancy {self.occupancy_sum / self.server_batches:.3f}",
            ),
        ]
        t = self.tally
        return "\n\n".join(
            [
                "## Served throughput at saturation",
                f"Server: `DDPM_MAX_BATCH={self.max_batch}`, continuous batching. {self.concurrency} "
                f"closed-loop clients (2 × slots), K uniform over {sorted(MIX)}, PNG responses. Warm-up "
                f"{self.warmup_s:.0f} s, then a {self.window_s:.1f} s measurement window. Load average "
                f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(["", "images·steps/s", "note"], rows),
                f"Requests: {t.sent} sent, {t.count('200')} × 200, {t.client_errors} client errors, "
                f"{t.censored} still in flight when the run ended (cancelled; outside the window).",
            ]
        )


async def _drive(
    server: Server,
    concurrency: int,
    warmup_s: float,
    window_s: float,
    seed: int,
    fields: driver.BodyFields | None = None,
) -> tuple[list[Outcome], list[probes.Reading]]:
    start = time.perf_counter()
    load = driver.closed_loop(
        server.base_url,
        concurrency=concurrency,
        mix=MIX,
        seed=seed,
        duration_s=warmup_s + window_s,
        max_requests=100_000,
        client_timeout_s=300.0,
        start=start,
        fields=fields,
    )
    readings = probes.readings_at(server, [warmup_s, warmup_s + window_s], start)
    outcomes, taken = await asyncio.gather(load, readings)
    return outcomes, taken


def run(
    model_dir: Path,
    *,
    max_batch: int = 16,
    warmup_s: float = 20.0,
    window_s: float = 150.0,
    seed: int = 1,
    torch_threads: int | None = None,
    compile: bool | None = None,
    fields: driver.BodyFields | None = None,
    compiled_sizes: int = 0,
) -> Served:
    """A fresh server on `model_dir` (default settings unless threads / compile are given), saturated by
    2 × max_batch closed-loop clients; stopped after. `fields(index)` adds body fields per request.
    `compiled_sizes`: wait until the server serves that many batch sizes compiled before the warm-up,
    so that a cold compile cache does not measure the background compile instead of the server."""
    concurrency = 2 * max_batch
    load_start = load_average()
    config = ServerConfig(model_dir, max_batch=max_batch, torch_threads=torch_threads, compile=compile)
    with Server(config) as server:
        if compiled_sizes:
            server.wait_compiled(compiled_sizes)
        outcomes, (first, last) = asyncio.run(_drive(server, concurrency, warmup_s, window_s, seed, fields))
    in_window = [o for o in outcomes if o.status == 200 and first.at_s <= o.finished_s <= last.at_s]
    return Served(
        max_batch=max_batch,
        concurrency=concurrency,
        warmup_s=warmup_s,
        window_s=last.at_s - first.at_s,
        completed=len(in_window),
        client_evals=sum(o.steps for o in in_window),
        server_evals=probes.delta(first, last, "ddpm_unet_evaluations_total"),
        server_batches=probes.delta(first, last, "ddpm_unet_batches_total"),
        occupancy_sum=probes.delta(first, last, "ddpm_batch_occupancy_ratio_sum"),
        step_seconds_sum=probes.delta(first, last, "ddpm_step_duration_seconds_sum"),
        tally=driver.tally(outcomes),
        server_cpu_s=last.cpu_s - first.cpu_s,
        settings=config.describe(),
        driver_cpu_s=last.driver_cpu_s - first.driver_cpu_s,
        load_average=(load_start, load_average()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=150.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    pin_threads()
    served = run(random_model_dir(), max_batch=args.max_batch, warmup_s=args.warmup, window_s=args.window)
    print(served.markdown())


if __name__ == "__main__":
    main()
