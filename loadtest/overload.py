"""(d) Overload: open-loop arrivals at twice the saturation rate for 60 s, with a moderate timeout_ms.

Every request must end with exactly one terminal answer (200, 429 queue full, or 504 deadline passed),
with no client-side errors or timeouts and nothing lost, and the server's resident memory must not grow
under sustained overload. The queue is kept small (DDPM_MAX_QUEUE=32) so that all three answers occur:
with the default 256 the deadline alone would bound the queue and 429 would never be exercised.

RSS is VmRSS from /proc/PID/status (current, not the peak that /metrics reports on the CPU). "Start" is
taken after a short warm-up burst at the same rate, so the allocator's one-off growth to a full batch is
not mistaken for a leak; the idle figure right after readiness is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest import driver, raw_ceiling, report, throughput
from loadtest.driver import Outcome, Tally
from loadtest.machine import load_average, pin_threads, random_model_dir
from loadtest.server import MetricsSnapshot, Server, ServerConfig

MIX = throughput.MIX
DURATION_S = 60.0
WARM_S = 6.0
TIMEOUT_MS = 15_000  # above the ~11 s a K=100 image needs in a full batch, far below the 120 s default
MAX_QUEUE = 32
RSS_BAR = 0.10
RSS_PERIOD_S = 2.0
SLACK_S = 30.0  # client timeout and wall cap beyond the server deadline: an answer is always due by then
STATUSES = {"200": "ok", "429": "queue_full", "504": "deadline_exceeded"}  # client status -> server label


@dataclass(frozen=True)
class OverloadResult:
    rate: float
    saturation: float  # requests per second the server completes at saturation
    duration_s: float
    warm: Tally
    outcomes: list[Outcome]
    server_counts: dict[str, float]  # Δ ddpm_requests_total over the loaded run, by status label
    server_evals: float  # Δ ddpm_unet_evaluations_total over the loaded run
    saturation_source: str
    rss_ready: int
    rss_start: int
    rss_end: int
    rss_samples: list[int]
    elapsed_s: float
    load_average: tuple[float, float]

    @property
    def tally(self) -> Tally:
        return driver.tally(self.outcomes)

    @property
    def answers_ok(self) -> bool:
        t = self.tally
        terminal = sum(t.count(status) for status in STATUSES)
        return t.consistent and terminal == t.sent == len(self.outcomes)

    @property
    def goodput(self) -> float:
        """Share of the UNet evaluations that ended in a delivered image."""
        return sum(o.steps for o in self.outcomes if o.status == 200) / self.server_evals

    @property
    def rss_growth(self) -> float:
        return self.rss_end / self.rss_start - 1

    @property
    def met(self) -> bool:
        return self.answers_ok and self.rss_growth < RSS_BAR

    def markdown(self) -> str:
        t = self.tally
        rows = []
        for k in MIX:
            mine = driver.tally([o for o in self.outcomes if o.steps == k])
            rows.append((f"K={k}", mine.sent, *(mine.count(s) for s in STATUSES), mine.client_errors))
        other = t.non_terminal_http + t.censored
        rows.append(("**all**", t.sent, *(t.count(s) for s in STATUSES), t.client_errors))
        server = ", ".join(f"{label} {self.server_counts.get(label, 0):.0f}" for label in STATUSES.values())
        ok = [o for o in self.outcomes if o.status == 200]
        p50 = driver.percentile(ok, 50)
        rss = [
            ("idle, right after /readyz", report.mib(self.rss_ready)),
            ("start of the loaded run (after the warm-up burst)", report.mib(self.rss_start)),
            (f"max while loaded (every {RSS_PERIOD_S:.0f} s)", report.mib(max(self.rss_samples))),
            ("end, after the last answer", report.mib(self.rss_end)),
        ]
        return "\n\n".join(
            [
                "## (d) Overload",
                f"Open-loop Poisson arrivals at {self.rate:.2f} req/s = 2 × the saturation rate "
                f"({self.saturation:.2f} req/s, {self.saturation_source}) for {self.duration_s:.0f} s, "
                f"K uniform over {sorted(MIX)}, `timeout_ms={TIMEOUT_MS}`. Server: `DDPM_MAX_BATCH=16`, "
                f"`DDPM_MAX_QUEUE={MAX_QUEUE}`. Client timeout {TIMEOUT_MS / 1000 + SLACK_S:.0f} s. "
                f"The run took {self.elapsed_s:.0f} s from the start of the schedule to the last answer; a "
                f"{WARM_S:.0f} s warm-up burst before it ({self.warm.sent} requests) is not counted. "
                f"Load average {self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(["", "sent", "200", "429", "504", "client errors / timeouts"], rows),
                f"Other outcomes (HTTP statuses outside 200/429/504, or no answer by the wall cap): "
                f"{other}. The server's own `ddpm_requests_total` over the run: {server}. Median latency "
                f"of the 200s: {report.pct(p50)}. Goodput: Σ K of the 200s ÷ Δ "
                f"`ddpm_unet_evaluations_total` = {self.goodput:.2f} (the rest was spent on images that "
                f"then passed their deadline).",
                report.table(["Server RSS (VmRSS)", ""], rss),
                report.bar(
                    "every request gets exactly one terminal answer, none lost, no client errors",
                    self.answers_ok,
                    f"{t.sent} sent = {t.count('200')} + {t.count('429')} + {t.count('504')} answered; "
                    f"{t.client_errors} client errors, {other} other",
                ),
                report.bar(
                    "RSS growth < 10 % from the start to the end of the load",
                    self.rss_growth < RSS_BAR,
                    f"{report.mib(self.rss_start)} → {report.mib(self.rss_end)} = **{self.rss_growth:+.1%}**",
                ),
            ]
        )


async def _sample_rss(server: Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(server.rss_bytes())
        with contextlib.suppress(TimeoutError):  # the period passed: take the next sample
            await asyncio.wait_for(stop.wait(), RSS_PERIOD_S)


async def load(
    server: Server,
    arrivals: Sequence[driver.Arrival],
    rss: list[int] | None = None,
    fields: driver.BodyFields | None = None,
    detail: driver.Detail | None = None,
) -> list[Outcome]:
    """The arrivals against the server with this benchmark's deadline and client limits; `rss` collects
    the server's RSS every RSS_PERIOD_S meanwhile (loadtest.adaptive reuses this with its own fields)."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(server, rss, stop)) if rss is not None else None
    try:
        return await driver.open_loop(
            server.base_url,
            arrivals,
            wall_cap_s=arrivals[-1].at_s + TIMEOUT_MS / 1000 + SLACK_S,
            client_timeout_s=TIMEOUT_MS / 1000 + SLACK_S,
            timeout_ms=TIMEOUT_MS,
            fields=fields,
            detail=detail,
        )
    finally:
        stop.set()
        if sampler is not None:
            await sampler


def _delta(before: MetricsSnapshot, after: MetricsSnapshot, name: str) -> float:
    return after.value(name) - before.value(name)


def _requests_by_status(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, float]:
    name = "ddpm_requests_total"
    labels = {sample_labels["status"] for sample_labels, _ in after.samples.get(name, [])}
    return {label: after.value(name, status=label) - before.value(name, status=label) for label in labels}


def run(
    model_dir: Path,
    saturation: float,
    *,
    saturation_source: str = "completed in (a)",
    duration_s: float = DURATION_S,
    seed: int = 3,
) -> OverloadResult:
    rate = 2 * saturation
    warm_arrivals = driver.poisson_arrivals(rate, WARM_S, MIX, seed + 1000, max_requests=10_000)
    arrivals = driver.poisson_arrivals(rate, duration_s, MIX, seed, max_requests=10_000)
    load_start = load_average()
    with Server(ServerConfig(model_dir, max_queue=MAX_QUEUE)) as server:
        rss_ready = server.rss_bytes()
        warm = driver.tally(asyncio.run(load(server, warm_arrivals)))
        before, rss_start = server.metrics(), server.rss_bytes()
        samples: list[int] = []
        start = time.perf_counter()
        outcomes = asyncio.run(load(server, arrivals, samples))
        elapsed = time.perf_counter() - start
        after, rss_end = server.metrics(), server.rss_bytes()
    return OverloadResult(
        rate=rate,
        saturation=saturation,
        duration_s=duration_s,
        warm=warm,
        outcomes=outcomes,
        server_counts=_requests_by_status(before, after),
        server_evals=_delta(before, after, "ddpm_unet_evaluations_total"),
        saturation_source=saturation_source,
        rss_ready=rss_ready,
        rss_start=rss_start,
        rss_end=rss_end,
        rss_samples=samples,
        elapsed_s=elapsed,
        load_average=(load_start, load_average()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--saturation", type=float, help="req/s at saturation; default: from the raw ceiling")
    args = parser.parse_args()
    pin_threads()
    model_dir = random_model_dir()
    if args.saturation:
        saturation, source = args.saturation, "given"
    else:
        saturation = raw_ceiling.evals_per_s_median(model_dir, 16, 30) / throughput.MEAN_K
        source = "raw ceiling ÷ mean K"
    print(run(model_dir, saturation, saturation_source=source, duration_s=args.duration).markdown())


if __name__ == "__main__":
    main()
