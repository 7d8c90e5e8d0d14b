"""(b) Continuous batching vs run-to-completion vs one-at-a-time on a K=10 / K=250 mix.

One arrival schedule (seeded Poisson, ~65 % of the continuous engine's capacity for this mix) is replayed
against three fresh servers on the same model: the default (continuous), DDPM_RUN_TO_COMPLETION=true, and
DDPM_MAX_BATCH=1. Latency is client-measured from each request's scheduled arrival. The two baselines
cannot keep up with this rate, so each run is capped in wall time: requests still pending at the cap are
cancelled and counted as censored, and a percentile that censored requests could move is shown as "≥".
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, replace
from pathlib import Path

from loadtest import driver, raw_ceiling, report
from loadtest.driver import Arrival, Outcome, Percentile
from loadtest.machine import load_average, pin_threads, random_model_dir
from loadtest.server import Server, ServerConfig

MIX = {10: 0.75, 250: 0.25}
MEAN_K = sum(k * w for k, w in MIX.items()) / sum(MIX.values())
LOAD = 0.65  # of the continuous engine's capacity for this mix
BAR = 5.0  # run-to-completion K=10 p50 ÷ continuous K=10 p50
QUANTILES = (50, 95, 99)
ARRIVAL_SEED = 2024


@dataclass(frozen=True)
class ModeResult:
    name: str
    config: ServerConfig
    outcomes: list[Outcome]
    elapsed_s: float
    load_average: tuple[float, float]

    def percentile(self, steps: int, q: float) -> Percentile | None:
        return driver.percentile([o for o in self.outcomes if o.steps == steps], q)


@dataclass(frozen=True)
class MixedResult:
    capacity: float  # images x steps per second of the continuous engine at saturation
    capacity_source: str
    rate: float
    duration_s: float
    cap_s: float
    arrivals: list[Arrival]
    modes: list[ModeResult]

    def mode(self, name: str) -> ModeResult:
        return next(m for m in self.modes if m.name == name)

    @property
    def ratio(self) -> tuple[float, bool] | None:
        """(RTC p50 ÷ continuous p50 at K=10, whether it is only a lower bound), None if unknown."""
        fast = self.mode("continuous").percentile(10, 50)
        slow = self.mode("run-to-completion").percentile(10, 50)
        if fast is None or slow is None or fast.lower_bound:
            return None
        return slow.seconds / fast.seconds, slow.lower_bound

    @property
    def met(self) -> bool:
        return self.ratio is not None and self.ratio[0] >= BAR

    def markdown(self) -> str:
        counts = {k: sum(a.steps == k for a in self.arrivals) for k in MIX}
        rows = []
        for mode in self.modes:
            for k in MIX:
                mine = [o for o in mode.outcomes if o.steps == k]
                t = driver.tally(mine)
                rows.append(
                    (
                        mode.name,
                        k,
                        t.sent,
                        t.count("200"),
                        t.censored,
                        t.sent - t.count("200") - t.censored,
                        *(report.pct(mode.percentile(k, q)) for q in QUANTILES),
                    )
                )
        runs = [
            (
                m.name,
                m.config.describe(),
                f"{m.elapsed_s:.0f} s",
                f"{max(o.send_lag_s for o in m.outcomes) * 1000:.0f} ms",
                f"{m.load_average[0]:.2f} → {m.load_average[1]:.2f}",
            )
            for m in self.modes
        ]
        ratio = self.ratio
        if ratio is None:
            verdict = report.bar("K=10 p50 ≥ 5× lower than run-to-completion", False, "ratio unknown")
        else:
            value = ("≥ " if ratio[1] else "") + f"{ratio[0]:.1f}×"
            fast = report.pct(self.mode("continuous").percentile(10, 50))
            slow = report.pct(self.mode("run-to-completion").percentile(10, 50))
            verdict = report.bar(
                "K=10 p50 with continuous batching ≥ 5× lower than with run-to-completion",
                self.met,
                f"{slow} ÷ {fast} = **{value}**",
            )
        return "\n\n".join(
            [
                "## (b) Continuous vs run-to-completion vs one-at-a-time",
                f"Mix: K=10 (75 %) and K=250 (25 %), mean K {MEAN_K:.1f}. Poisson arrivals at "
                f"{self.rate:.3f} req/s = {LOAD:.0%} of the continuous capacity ({self.capacity:.1f} "
                f"images·steps/s {self.capacity_source} ÷ mean K), seed {ARRIVAL_SEED}, for "
                f"{self.duration_s:.0f} s: "
                f"{len(self.arrivals)} requests ({counts[10]} × K=10, {counts[250]} × K=250), the same "
                f"schedule for every mode. Each run is capped at {self.cap_s:.0f} s after the first "
                f"arrival; latency is client-measured from the scheduled arrival.",
                report.table(["Mode", "K", "sent", "200", "censored", "other", "p50", "p95", "p99"], rows),
                verdict,
                *self._backlog_notes(),
                report.table(["Mode", "server", "run time", "max send lag", "load average"], runs),
            ]
        )

    def _backlog_notes(self) -> list[str]:
        notes = []
        for mode in self.modes:
            censored = driver.tally(mode.outcomes).censored
            if censored:
                notes.append(
                    f"{mode.name}: {censored} of {len(mode.outcomes)} requests were still pending at the "
                    f"{self.cap_s:.0f} s cap, so this mode did not keep up with {self.rate:.2f} req/s; its "
                    "backlog (and so its latency) grows with the length of the run, and the percentiles "
                    "marked ≥ are lower bounds."
                )
        return notes


def replay(base_url: str, arrivals: list[Arrival], cap_s: float) -> tuple[list[Outcome], float]:
    """One mode's run of the shared schedule: its outcomes and wall time."""
    start = time.perf_counter()
    outcomes = asyncio.run(
        driver.open_loop(
            base_url,
            arrivals,
            wall_cap_s=cap_s,
            client_timeout_s=cap_s + 60,
            timeout_ms=600_000,  # no server deadline: the wall cap decides, the same for all modes
            start=start,
        )
    )
    return outcomes, time.perf_counter() - start


def run(
    model_dir: Path,
    capacity: float,
    *,
    capacity_source: str = "served at saturation in (a)",
    duration_s: float = 120.0,
    cap_s: float = 200.0,
    max_batch: int = 16,
) -> MixedResult:
    rate = LOAD * capacity / MEAN_K
    arrivals = driver.poisson_arrivals(rate, duration_s, MIX, ARRIVAL_SEED, max_requests=2000)
    base = ServerConfig(model_dir, max_batch=max_batch)
    configs = {
        "continuous": base,
        "run-to-completion": replace(base, run_to_completion=True),
        "one-at-a-time": replace(base, max_batch=1),
    }
    modes = []
    for name, config in configs.items():
        load_start = load_average()
        with Server(config) as server:
            outcomes, elapsed = replay(server.base_url, arrivals, cap_s)
        modes.append(ModeResult(name, config, outcomes, elapsed, (load_start, load_average())))
    return MixedResult(capacity, capacity_source, rate, duration_s, cap_s, arrivals, modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals")
    parser.add_argument("--cap", type=float, default=200.0, help="wall cap per mode, seconds")
    parser.add_argument("--capacity", type=float, help="images*steps/s; default: measure the raw ceiling")
    args = parser.parse_args()
    pin_threads()
    model_dir = random_model_dir()
    if args.capacity:
        capacity, source = args.capacity, "given"
    else:
        capacity, source = raw_ceiling.evals_per_s_median(model_dir, 16, 30), "raw ceiling"
    result = run(model_dir, capacity, capacity_source=source, duration_s=args.duration, cap_s=args.cap)
    print(result.markdown())


if __name__ == "__main__":
    main()
