"""(a) Ceiling vs served throughput at saturation, mixed K in {10, 25, 50, 100}.

Saturation by closed-loop clients (twice as many as slots, so a queue is always waiting and no slot
idles), rather than open-loop arrivals above capacity: those would end in 429s once the queue fills, and
the rejected requests would only add noise to a throughput figure. Served throughput counts UNet
evaluations = the sum of K over images answered 200 inside the measurement window, divided by the window;
the server's own counter (ddpm_unet_evaluations_total) over the same window is the cross-check. The raw
ceiling is timed before and after the served run, in this process, and pooled (drift shows). Two
cross-checks for a shared core: the ceiling from the median call, and both sides per CPU-second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import driver, engine_step, probes, report
from loadtest.ceiling import Ceiling, pooled_median_evals_per_s
from loadtest.ceiling import measure as measure_ceiling
from loadtest.driver import Outcome, Tally
from loadtest.machine import load_average, pin_threads, random_model
from loadtest.server import Server, ServerConfig
from service.model.store import LoadedModel

MIX = {10: 1.0, 25: 1.0, 50: 1.0, 100: 1.0}
BAR = 0.85
MEAN_K = statistics.fmean(MIX)  # the mix is uniform


@dataclass(frozen=True)
class ThroughputResult:
    max_batch: int
    concurrency: int
    warmup_s: float
    window_s: float
    before: Ceiling
    after: Ceiling
    completed: int  # 200s that finished inside the window
    client_evals: int  # their sum of K
    server_evals: float
    server_batches: float
    occupancy_sum: float
    step_seconds_sum: float
    tally: Tally
    server_cpu_s: float  # CPU time the server process used over the window
    driver_cpu_s: float  # CPU time the load generator (this process) used over the window
    step: engine_step.EngineStep
    load_average: tuple[float, float]

    @property
    def ceiling(self) -> float:
        """Σ rows ÷ Σ call time of the runs before and after, as the bar defines it."""
        calls = self.before.calls + self.after.calls
        return self.max_batch * calls / (self.before.total_s + self.after.total_s)

    @property
    def ceiling_median(self) -> float:
        return pooled_median_evals_per_s(self.before, self.after)

    @property
    def ceiling_per_cpu_s(self) -> float:
        calls = self.before.calls + self.after.calls
        return self.max_batch * calls / (self.before.cpu_s + self.after.cpu_s)

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
    def ratio(self) -> float:
        return self.served / self.ceiling

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.window_s

    @property
    def met(self) -> bool:
        return self.ratio >= BAR

    def markdown(self) -> str:
        b = self.max_batch
        mean_step = self.step_seconds_sum / self.server_batches
        raw_call = statistics.median([*self.before.call_s, *self.after.call_s])
        rows = [
            (f"Raw UNet, batch {b}, before", f"{self.before.evals_per_s:.1f}", self._call(self.before)),
            (f"Raw UNet, batch {b}, after", f"{self.after.evals_per_s:.1f}", self._call(self.after)),
            ("**Ceiling** (both runs: Σ rows ÷ Σ call time)", f"**{self.ceiling:.1f}**", ""),
            (
                "**Served**, client side (Σ K of 200s finished in the window ÷ window)",
                f"**{self.served:.1f}**",
                f"{self.completed} images, {self.requests_per_s:.2f} req/s",
            ),
            (
                "Served, server counter (Δ `ddpm_unet_evaluations_total` ÷ window)",
                f"{self.served_by_counter:.1f}",
                f"{self.server_batches:.0f} batched UNet calls",
            ),
        ]
        checks = [
            (
                "Wall time, ceiling from the median call (other processes' bursts removed from the "
                "ceiling only: a strict reading)",
                f"{self.served:.1f} ÷ {self.ceiling_median:.1f}",
                f"{self.served / self.ceiling_median:.3f}",
            ),
            (
                "Per CPU-second (server: Δ evaluations ÷ Δ its utime + stime, HTTP included; raw: rows ÷ "
                "CPU time of the calls): insensitive to other processes",
                f"{self.served_per_cpu_s:.1f} ÷ {self.ceiling_per_cpu_s:.1f}",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s:.3f}",
            ),
        ]
        engine = [
            (
                "Mean batch occupancy (Δ sum ÷ Δ count, `ddpm_batch_occupancy_ratio`)",
                f"{self.occupancy_sum / self.server_batches:.3f}",
            ),
            (
                "Mean rows per UNet call (Δ evaluations ÷ Δ `ddpm_unet_batches_total`)",
                f"{self.server_evals / self.server_batches:.2f}",
            ),
            ("Mean engine iteration (`ddpm_step_duration_seconds`)", f"{mean_step * 1000:.1f} ms"),
            (f"Raw forward at batch {b} (median call)", f"{raw_call * 1000:.1f} ms"),
        ]
        share = self.server_cpu_s / self.window_s
        wall_vs_cpu = self.ceiling_per_cpu_s / self.ceiling
        gap = [
            (
                f"Engine iteration vs raw forward, in-process, alternating ({self.step.samples} each, "
                "CPU-time medians): raw ÷ iteration",
                f"{self.step.raw_cpu_s * 1000:.1f} ÷ {self.step.step_cpu_s * 1000:.1f} ms",
                f"{self.step.cpu_ratio:.3f}",
            ),
            (
                "Whole server process per CPU-second (adds HTTP, asyncio, PNG, metrics, thread hand-offs)",
                f"{self.served_per_cpu_s:.1f} ÷ {self.ceiling_per_cpu_s:.1f}",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s:.3f}",
            ),
            (
                "Share of a core the server got during the window (Δ its CPU time ÷ window)",
                f"{self.server_cpu_s:.1f} s ÷ {self.window_s:.1f} s",
                f"{share:.3f}",
            ),
            (
                "Predicted wall ratio = per-CPU-second ratio × core share × (ceiling per CPU-s ÷ per s)",
                "",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s * share * wall_vs_cpu:.3f}",
            ),
            ("Measured wall ratio (the bar)", "", f"{self.ratio:.3f}"),
        ]
        t = self.tally
        return "\n\n".join(
            [
                "## (a) Ceiling vs served throughput",
                f"Server: `DDPM_MAX_BATCH={b}`, continuous batching. {self.concurrency} closed-loop clients "
                f"(2 × slots), K uniform over {sorted(MIX)}, PNG responses. Warm-up {self.warmup_s:.0f} s, "
                f"then a {self.window_s:.1f} s measurement window. The raw ceiling is timed in the "
                f"benchmark process just before and just after the served run. Load average "
                f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(["", "images·steps/s", "note"], rows),
                report.bar(
                    "served ≥ 0.85 × ceiling",
                    self.met,
                    f"served ÷ ceiling = {self.served:.1f} ÷ {self.ceiling:.1f} = **{self.ratio:.3f}**; "
                    f"by the server counter {self.served_by_counter / self.ceiling:.3f}",
                ),
                "Cross-checks, because the core is shared with other work:",
                report.table(["Reading", "served ÷ raw", "ratio"], checks),
                report.table(["Engine, over the window", ""], engine),
                "Where served throughput goes (a decomposition; the last two lines should agree):",
                report.table(["Factor", "", "ratio"], gap),
                f"The load generator (the benchmark process) used {self.driver_cpu_s / self.window_s:.2f} "
                "of a core over the window.",
                f"Requests: {t.sent} sent, {t.count('200')} × 200, {t.client_errors} client errors, "
                f"{t.censored} still in flight when the run ended (cancelled; outside the window).",
            ]
        )

    @staticmethod
    def _call(c: Ceiling) -> str:
        return f"{c.calls} calls, {c.median_call_s * 1000:.1f} ms/call median"


async def _drive(
    server: Server, concurrency: int, warmup_s: float, window_s: float, seed: int
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
    )
    readings = probes.readings_at(server, [warmup_s, warmup_s + window_s], start)
    outcomes, taken = await asyncio.gather(load, readings)
    return outcomes, taken


def run(
    model_dir: Path,
    model: LoadedModel,
    *,
    max_batch: int = 16,
    warmup_s: float = 20.0,
    window_s: float = 150.0,
    ceiling_calls: int = 60,
    seed: int = 1,
) -> ThroughputResult:
    concurrency = 2 * max_batch
    load_start = load_average()
    before = measure_ceiling(model, max_batch, ceiling_calls)
    step = engine_step.measure(model, max_batch)
    with Server(ServerConfig(model_dir, max_batch=max_batch)) as server:
        outcomes, (first, last) = asyncio.run(_drive(server, concurrency, warmup_s, window_s, seed))
    after = measure_ceiling(model, max_batch, ceiling_calls)
    in_window = [o for o in outcomes if o.status == 200 and first.at_s <= o.finished_s <= last.at_s]
    return ThroughputResult(
        max_batch=max_batch,
        concurrency=concurrency,
        warmup_s=warmup_s,
        window_s=last.at_s - first.at_s,
        before=before,
        after=after,
        completed=len(in_window),
        client_evals=sum(o.steps for o in in_window),
        server_evals=probes.delta(first, last, "ddpm_unet_evaluations_total"),
        server_batches=probes.delta(first, last, "ddpm_unet_batches_total"),
        occupancy_sum=probes.delta(first, last, "ddpm_batch_occupancy_ratio_sum"),
        step_seconds_sum=probes.delta(first, last, "ddpm_step_duration_seconds_sum"),
        tally=driver.tally(outcomes),
        server_cpu_s=last.cpu_s - first.cpu_s,
        driver_cpu_s=last.driver_cpu_s - first.driver_cpu_s,
        step=step,
        load_average=(load_start, load_average()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=150.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    pin_threads()
    model_dir, model = random_model()
    result = run(model_dir, model, max_batch=args.max_batch, warmup_s=args.warmup, window_s=args.window)
    print(result.markdown())


if __name__ == "__main__":
    main()
