"""Degrade before refusing: the overload benchmark's arrivals served twice, plain shedding vs adaptive.

One arrival schedule (open-loop Poisson at twice the saturation rate for 60 s, K uniform over
[10, 25, 50, 100], `timeout_ms=15000`, PNG answers, `DDPM_MAX_QUEUE=32`: the overload benchmark's
settings, on the bundled calibrated model) is sent to two fresh servers with default settings: once as
plain requests, once with `min_steps=10` (every other field equal). Reported side by side: requests
answered 200 within their deadline, refusals (429), deadline misses (504), requests lost (no terminal
answer), goodput (UNet evaluations that ended in a delivered image ÷ all evaluations, from the server's
counter), the mean calibrated FID of the images served (each 200's `X-Calibrated-FID`: tradeoff.json's
FID of the (sampler, K) that ran, interpolated in log K for a re-planned image), K asked vs used and the
reasons for degrading.

Both servers serve compiled at every batch size before the load starts (the package cache, built here
first if empty), so neither run competes with background compilation.

    python -m loadtest.adaptive --out docs/adaptive.md
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest import driver, overload, report, throughput
from loadtest.driver import Outcome
from loadtest.machine import describe, load_average, pin_threads
from loadtest.overload import MAX_QUEUE, TIMEOUT_MS, WARM_S
from loadtest.server import COMPILED_SIZES, Server, ServerConfig

BUNDLED = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-small"
MIX = throughput.MIX
DURATION_S = 60.0
FLOOR = 10
SATURATION_WARM_S = 15.0
SATURATION_WINDOW_S = 45.0
IN_TIME_BAR = 0.95
GOODPUT_BAR = 0.95


HOW = """## How it works

A request opts in with `min_steps` (the fewest steps it accepts) and/or `max_degraded_fid` (the worst
calibrated FID it accepts). The gateway turns that into fallbacks: the calibrated frontier's points below
the asked K and at or above the floor (the named sampler's own points when the request names one),
then the floor itself (`service/api/fallbacks.py`). The engine picks among them with the live load
(`service/engine/degrade.py`):

- **At admission into a slot**: the largest option that ends before the deadline at the measured
  iteration time (× 1.2) and is no larger than the queue-pressure cap: no cap while at most a quarter of
  the slots' worth of rows wait behind it, then falling geometrically to the floor, reached at one
  slot-full of waiting rows (or half the queue's limit, if less). The images of one request share the
  decision. A row is refused only when not even its floor fits the deadline.
- **Mid-flight**: a running row whose remaining steps would end after its deadline, or exceed its
  share of the queue-pressure cap, is re-planned onto its own sampler's coarsest schedule from its
  current timestep that fits, never below the floor (`service/diffusion/replan.py`): the steps already
  taken and the current t stay, the steps below t become those of the coarser schedule, and the
  current step's coefficients are recomputed for its new target (for ancestral DDPM, the respacing of
  the remaining interval; for DDIM and DPM-Solver++, a shorter timestep list from the current t).

Reproducibility. A row that is not re-planned is what it would be alone, whatever else is in its batch
(degrading at admission only changes which (sampler, K) it runs, and the response says which: that
request, sent again with those fields, gives the same image). A re-planned row's trajectory equals a
fresh run on the combined schedule with the same seed: every step before the re-plan keeps its
coefficients (a step's coefficients depend on its own t and the next kept t below it, both unchanged),
and the noise stream draws once per step either way (`tests/engine/test_replan.py`, to 1e-5, for ddpm
with learned and fixed-small variances, DDIM and DPM-Solver++). It is reproducible given the same re-plan
point (the response's `degradation.replanned_at`), which depends on the load at the time: the same
request sent again under another load may be re-planned elsewhere or not at all.

The response and `/metrics` say what degrading cost: `degradation` (reason, K and sampler asked vs
used, per-image steps, the calibrated FID asked vs used), `ddpm_degraded_requests_total{reason}`,
`ddpm_degraded_steps_total{which="asked"|"used"}` and the summary `ddpm_degraded_fid_delta` (Grafana
panel 12)."""


@dataclass(frozen=True)
class Mode:
    name: str
    fields: Mapping[str, object]


PLAIN = Mode("plain shedding", {})
ADAPTIVE = Mode(f"adaptive (min_steps={FLOOR})", {"min_steps": FLOOR})


@dataclass(frozen=True)
class ModeResult:
    mode: Mode
    outcomes: list[Outcome]
    evaluations: float  # Δ ddpm_unet_evaluations_total over the loaded run
    compiled_wait_s: float
    elapsed_s: float
    step_s: float  # mean iteration over the loaded run (Δ sum ÷ Δ count of ddpm_step_duration_seconds)
    rows: float  # mean rows per iteration (Δ ddpm_batch_rows)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def in_time(self) -> int:
        return sum(1 for o in self.ok if o.latency_s <= TIMEOUT_MS / 1000)

    @property
    def lost(self) -> int:
        t = driver.tally(self.outcomes)
        return t.client_errors + t.censored + t.non_terminal_http + t.duplicates

    @property
    def goodput(self) -> float:
        used = sum(_detail(o, "steps") for o in self.ok)
        return used / self.evaluations if self.evaluations else float("nan")

    def mean(self, key: str) -> float | None:
        values = [_detail(o, key) for o in self.ok if o.detail and o.detail.get(key) is not None]
        return statistics.fmean(values) if values else None

    @property
    def reasons(self) -> Counter[str]:
        return Counter(str(o.detail["reason"]) for o in self.ok if o.detail and o.detail.get("reason"))


def _detail(outcome: Outcome, key: str) -> float:
    assert outcome.detail is not None
    return float(outcome.detail[key])  # type: ignore[arg-type]


def keep(response: httpx.Response) -> dict[str, object]:
    """What ran, from a PNG answer's headers: K, sampler variant, the calibrated FID as run, the reason."""
    headers = response.headers
    variance = headers.get("X-Variance")
    variant = headers["X-Sampler"] if variance in (None, "learned_range") else variance.replace("_", "-")
    fid = headers.get("X-Calibrated-FID")
    return {
        "steps": int(headers["X-Steps"]),
        "sampler": variant,  # tradeoff.json's name: ddpm, analytic, fixed-small, dpm++2m, ...
        "fid": None if fid is None else float(fid),
        "reason": headers.get("X-Degraded"),
    }


def serve(
    model_dir: Path, mode: Mode, arrivals: list[driver.Arrival], warm: list[driver.Arrival]
) -> ModeResult:
    with Server(ServerConfig(model_dir, max_queue=MAX_QUEUE)) as server:
        compiled_wait = server.wait_compiled()
        asyncio.run(overload.load(server, warm, None, lambda _: mode.fields, keep))
        before = server.metrics()
        start = time.perf_counter()
        outcomes = asyncio.run(overload.load(server, arrivals, None, lambda _: mode.fields, keep))
        elapsed = time.perf_counter() - start
        after = server.metrics()

    def delta(name: str) -> float:
        return after.value(name) - before.value(name)

    iterations = max(1.0, delta("ddpm_step_duration_seconds_count"))
    step_s = delta("ddpm_step_duration_seconds_sum") / iterations
    rows = delta("ddpm_batch_rows_sum") / iterations
    return ModeResult(
        mode, outcomes, delta("ddpm_unet_evaluations_total"), compiled_wait, elapsed, step_s, rows
    )


@dataclass(frozen=True)
class AdaptiveResult:
    rate: float
    saturation: float
    saturation_source: str
    duration_s: float
    runs: tuple[ModeResult, ModeResult]
    load_average: tuple[float, float]

    @property
    def adaptive(self) -> ModeResult:
        return self.runs[1]

    @property
    def met(self) -> bool:
        a = self.adaptive
        in_time = a.in_time / len(a.outcomes)
        return in_time >= IN_TIME_BAR and a.goodput >= GOODPUT_BAR and a.lost == 0

    def _setup(self) -> str:
        waits = " s and ".join(f"{run.compiled_wait_s:.0f}" for run in self.runs)
        return (
            f"Open-loop Poisson arrivals at {self.rate:.2f} req/s = 2 × the saturation rate "
            f"({self.saturation:.2f} req/s, {self.saturation_source}) for {self.duration_s:.0f} s, K "
            f"uniform over {sorted(MIX)}, `timeout_ms={TIMEOUT_MS}`, the same schedule (seed) for both "
            f"runs. Server: the bundled `fmnist-small`, default settings, `DDPM_MAX_BATCH=16`, "
            f"`DDPM_MAX_QUEUE={MAX_QUEUE}`, one fresh server per run, compiled at every batch size before "
            f"the load (waited {waits} s). PNG answers in both runs (what ran is read from their "
            f"headers). A {WARM_S:.0f} s warm-up burst at the same rate precedes each run and is not "
            "counted. Load average "
            f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}."
        )

    def markdown(self) -> str:
        a = self.adaptive
        sent = len(a.outcomes)
        in_time = a.in_time / sent
        rows = [_row(run) for run in self.runs]
        headers = [
            "",
            "sent",
            "200 in time",
            "429",
            "504",
            "lost",
            "goodput",
            "mean FID served",
            "mean K asked → used",
            "p50 / p99 latency of 200s",
            "mean iteration (rows)",
        ]
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(a.reasons.items())) or "none"
        per_k = [_per_k(run) for run in self.runs]
        return "\n\n".join(
            [
                "## Degrade before refusing: plain shedding vs adaptive at 2× saturation",
                self._setup(),
                report.table(headers, rows),
                "Goodput: Σ steps of the 200s (as run) ÷ Δ `ddpm_unet_evaluations_total`. Mean FID: "
                "tradeoff.json's FID (1,000 samples where calibrated) of the (sampler, K) each served "
                "image ran (its `X-Calibrated-FID` header), averaged over the 200s; lower is better. "
                "Lost: client errors, no answer by the wall cap, or a status other than 200/429/504. "
                "Degraded in the adaptive run, by reason: "
                f"{reasons}.",
                report.table(["K asked", *[run.mode.name for run in self.runs]], _merge(per_k)),
                report.bar(
                    f"≥ {IN_TIME_BAR:.0%} of requests answered 200 within their deadline (adaptive)",
                    in_time >= IN_TIME_BAR,
                    f"{a.in_time} of {sent} = **{in_time:.1%}** (plain: "
                    f"{self.runs[0].in_time / len(self.runs[0].outcomes):.1%})",
                ),
                report.bar(
                    f"goodput ≥ {GOODPUT_BAR} (adaptive)",
                    a.goodput >= GOODPUT_BAR,
                    f"**{a.goodput:.3f}** (plain: {self.runs[0].goodput:.3f})",
                ),
                report.bar("no request lost (adaptive)", a.lost == 0, f"{a.lost} lost of {sent}"),
            ]
        )


def _row(run: ModeResult) -> list[object]:
    t = driver.tally(run.outcomes)
    ok = run.ok
    p50, p99 = driver.percentile(ok, 50), driver.percentile(ok, 99)
    asked = statistics.fmean(o.steps for o in ok) if ok else float("nan")
    used = run.mean("steps")
    fid = run.mean("fid")
    return [
        f"**{run.mode.name}**",
        t.sent,
        f"{run.in_time} ({run.in_time / t.sent:.1%})",
        t.count("429"),
        t.count("504"),
        run.lost,
        f"{run.goodput:.3f}",
        "–" if fid is None else f"{fid:.2f}",
        f"{asked:.1f} → {used:.1f}" if used is not None else "–",
        f"{report.pct(p50)} / {report.pct(p99)}",
        f"{run.step_s * 1000:.1f} ms ({run.rows:.1f})",
    ]


def _per_k(run: ModeResult) -> dict[int, str]:
    cells = {}
    for k in sorted(MIX):
        mine = [o for o in run.outcomes if o.steps == k]
        ok = [o for o in mine if o.status == 200]
        used = Counter(f"{o.detail['sampler']} {o.detail['steps']}" for o in ok if o.detail)
        common = ", ".join(f"{what} ×{n}" for what, n in used.most_common(3))
        fids = [_detail(o, "fid") for o in ok if o.detail and o.detail.get("fid") is not None]
        fid = f"; mean FID {statistics.fmean(fids):.2f}" if fids else ""
        cells[k] = f"{len(ok)}/{len(mine)} served: {common or '–'}{fid}"
    return cells


def _merge(per_k: list[dict[int, str]]) -> list[list[object]]:
    return [[f"K={k}", *(cells[k] for cells in per_k)] for k in sorted(MIX)]


def run(
    model_dir: Path, saturation: float, source: str, duration_s: float = DURATION_S, seed: int = 3
) -> AdaptiveResult:
    rate = 2 * saturation
    warm = driver.poisson_arrivals(rate, WARM_S, MIX, seed + 1000, max_requests=10_000)
    arrivals = driver.poisson_arrivals(rate, duration_s, MIX, seed, max_requests=10_000)
    load_start = load_average()
    runs = (serve(model_dir, PLAIN, arrivals, warm), serve(model_dir, ADAPTIVE, arrivals, warm))
    return AdaptiveResult(rate, saturation, source, duration_s, runs, (load_start, load_average()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--saturation", type=float, help="req/s at saturation; default: from the raw ceiling")
    parser.add_argument("--out", type=Path, help="write the report here (default: print it)")
    args = parser.parse_args()
    pin_threads()
    started = time.perf_counter()
    if args.saturation:
        saturation, source = args.saturation, "given"
    else:
        served = throughput.run(
            BUNDLED, warmup_s=SATURATION_WARM_S, window_s=SATURATION_WINDOW_S, compiled_sizes=COMPILED_SIZES
        )
        saturation = served.requests_per_s
        source = (
            f"completed by a fresh default server under {served.concurrency} closed-loop clients, the "
            f"same mix, PNG answers, compiled at every batch size, over a {served.window_s:.0f} s window "
            "measured first in this run"
        )
    result = run(BUNDLED, saturation, source, args.duration)
    machine = describe()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (time.perf_counter() - started) / 60
    document = "\n\n".join(
        [
            "# Load-adaptive step budgets",
            f"Written by `python -m loadtest.adaptive` on {when} ({minutes:.1f} min). Generated: rerun "
            "rather than edit. Nothing else ran on the machine: the benchmark process (the load "
            "generator, one intra-op thread) and one server at a time (default settings: its threads "
            "chosen per batch size).",
            report.table(["Machine", ""], [row for row in machine.rows() if row[0] != "torch threads"]),
            HOW,
            result.markdown(),
        ]
    )
    if args.out:
        args.out.write_text(document + "\n")
    print(document)


if __name__ == "__main__":
    main()
