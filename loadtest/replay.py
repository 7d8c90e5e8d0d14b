"""Replay a mixed-K workload against any ddpm-serve base URL and write a report.

    python -m loadtest.replay --base-url http://127.0.0.1:8000 --mix 10:3,50:2,250:1 --rate 2 --duration 60 \
        --out loadtest-report/

The target may be the embedded server, the gateway over Triton, or anything else that speaks the HTTP API.
Open loop by default: the arrival times are a seeded Poisson schedule (or a recorded one, --trace), every
request is sent at its time whatever the server is doing, and its latency runs from that time, so a slow
server shows as latency, not as a lower offered load (see loadtest/driver.py for why this is our own driver
rather than Locust). --concurrency N runs N closed-loop clients instead, to saturate a server.

Writes into --out: report.md (per-K percentiles, throughput, error counts), report.json (the same, for
scripts), latency_vs_k.png (p50/p95/p99 against K) and trace.jsonl (the schedule, replayable with --trace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest import driver
from loadtest.driver import Arrival
from loadtest.replay_report import ReplayReport, summarize, write_report

DEFAULT_MIX = "10:3,25:2,50:2,100:1,250:1"


class WorkloadError(ValueError):
    """A workload option that cannot be run; the message names the option."""


def parse_mix(text: str) -> dict[int, float]:
    """'10:3,50:1' -> {10: 3.0, 50: 1.0}; a bare '10,50' weighs every K equally."""
    mix: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        k_text, _, weight_text = part.partition(":")
        try:
            k = int(k_text)
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise WorkloadError(f"--mix: {part!r} is not K or K:weight (e.g. 10:3,250:1)") from None
        if k < 1:
            raise WorkloadError(f"--mix: K must be >= 1, got {k}")
        if not (weight > 0 and math.isfinite(weight)):
            raise WorkloadError(f"--mix: the weight of K={k} must be a positive number, got {weight_text}")
        if k in mix:
            raise WorkloadError(f"--mix: K={k} is listed twice")
        mix[k] = weight
    if not mix:
        raise WorkloadError("--mix is empty; give K:weight pairs, e.g. 10:3,250:1")
    return mix


def write_trace(arrivals: Sequence[Arrival], path: Path) -> None:
    path.write_text("".join(json.dumps({"at_s": a.at_s, "steps": a.steps}) + "\n" for a in arrivals))


def read_trace(path: Path) -> list[Arrival]:
    """A schedule written by write_trace (or by hand): one {"at_s": seconds, "steps": K} per line."""
    arrivals: list[Arrival] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            at_s, steps = float(item["at_s"]), int(item["steps"])
        except (ValueError, KeyError, TypeError):
            expected = "{'at_s': seconds, 'steps': K}"
            raise WorkloadError(f"--trace {path}:{number}: expected {expected}") from None
        if at_s < 0 or steps < 1:
            raise WorkloadError(f"--trace {path}:{number}: at_s must be >= 0 and steps >= 1")
        arrivals.append(Arrival(len(arrivals), at_s, steps))
    if not arrivals:
        raise WorkloadError(f"--trace {path} has no arrivals")
    arrivals.sort(key=lambda a: a.at_s)
    return [Arrival(i, a.at_s, a.steps) for i, a in enumerate(arrivals)]


def run_open_loop(
    base_url: str, arrivals: Sequence[Arrival], *, wall_cap_s: float, timeout_ms: int | None = None
) -> ReplayReport:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    outcomes = asyncio.run(
        driver.open_loop(
            base_url, arrivals, wall_cap_s=wall_cap_s, client_timeout_s=wall_cap_s, timeout_ms=timeout_ms
        )
    )
    mode = f"open loop, {len(arrivals)} arrivals over {arrivals[-1].at_s:.1f} s, wall cap {wall_cap_s:.0f} s"
    return summarize(base_url, mode, started, outcomes)


def run_closed_loop(
    base_url: str,
    *,
    concurrency: int,
    mix: Mapping[int, float],
    seed: int,
    duration_s: float,
    drain_s: float,
    timeout_ms: int | None = None,
) -> ReplayReport:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    outcomes = asyncio.run(
        driver.closed_loop(
            base_url,
            concurrency=concurrency,
            mix=mix,
            seed=seed,
            duration_s=duration_s,
            max_requests=1_000_000,
            client_timeout_s=duration_s + drain_s,
            drain_s=drain_s,
            timeout_ms=timeout_ms,
        )
    )
    mode = f"closed loop, {concurrency} clients for {duration_s:.0f} s (+{drain_s:.0f} s drain)"
    return summarize(base_url, mode, started, outcomes)


def check_reachable(base_url: str) -> None:
    """Fail before the run, with the URL named, when nothing answers there."""
    try:
        httpx.get(f"{base_url}/healthz", timeout=10.0, trust_env=False)
    except httpx.HTTPError as e:
        raise WorkloadError(f"--base-url {base_url}: no answer from /healthz ({type(e).__name__})") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"K:weight pairs (default {DEFAULT_MIX})")
    p.add_argument("--rate", type=float, default=1.0, help="open loop: mean arrivals per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals or of load")
    p.add_argument("--trace", type=Path, help="replay this schedule (JSON lines at_s, steps) instead")
    p.add_argument("--concurrency", type=int, help="closed loop with N clients instead")
    p.add_argument("--wall-cap", type=float, help="cancel what is pending then (default 2 x span + 60)")
    p.add_argument("--drain", type=float, default=60.0, help="closed loop: wait for the last answers")
    p.add_argument("--timeout-ms", type=int, help="the timeout_ms field sent with every request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=Path("loadtest-report"), help="folder for the report files")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix)
        if args.duration <= 0 or args.rate <= 0:
            raise WorkloadError("--duration and --rate must be positive")
        if args.concurrency is not None and args.concurrency < 1:
            raise WorkloadError(f"--concurrency must be >= 1, got {args.concurrency}")
        if args.concurrency is not None and args.trace is not None:
            raise WorkloadError("--trace is an open-loop schedule; leave out --concurrency to replay it")
        if args.concurrency is None:
            if args.trace is not None:
                arrivals = read_trace(args.trace)
            else:
                arrivals = driver.poisson_arrivals(
                    args.rate, args.duration, mix, args.seed, args.max_requests
                )
            if not arrivals:
                raise WorkloadError("the schedule is empty: raise --rate or --duration")
        base_url = args.base_url.rstrip("/")
        check_reachable(base_url)
    except WorkloadError as e:
        parser.error(str(e))
    begin = time.perf_counter()
    if args.concurrency is None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_trace(arrivals, args.out / "trace.jsonl")
        cap = args.wall_cap if args.wall_cap is not None else 2 * arrivals[-1].at_s + 60.0
        result = run_open_loop(base_url, arrivals, wall_cap_s=cap, timeout_ms=args.timeout_ms)
    else:
        result = run_closed_loop(
            base_url,
            concurrency=args.concurrency,
            mix=mix,
            seed=args.seed,
            duration_s=args.duration,
            drain_s=args.drain,
            timeout_ms=args.timeout_ms,
        )
    path = write_report(result, args.out)
    print(result.markdown())
    print(f"wrote {path} ({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
