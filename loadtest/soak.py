"""Soak: a long run at 70 % of saturation (mixed K, plain and streamed requests, some clients leaving
early), with the server's RSS, open file descriptors, threads and the p99 latency sampled every minute.

Bars (written with the numbers): RSS growth < 5 % from minute 5 to the end; descriptors and threads flat
(the last minute's count at most the largest of minutes 1-5 plus a small allowance for keep-alive
connections); p99 drift < 10 % (the last five minutes' p99 against minutes 5-10); no request lost (each
ends with exactly one answer: 200, 429, 504, or cancelled by its own client).

    python -m loadtest.soak --minutes 30 --out docs/soak.md --plot docs/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest import report, throughput
from loadtest.adaptive import BUNDLED
from loadtest.machine import load_average, pin_threads
from loadtest.server import COMPILED_SIZES, MetricsSnapshot, Server, ServerConfig

LOAD = 0.7
STREAM_SHARE = 1 / 3
LEAVE_SHARE = 0.1  # clients that disconnect before their answer
SAMPLE_S = 60.0
RSS_BAR = 0.05
P99_BAR = 0.10
FD_ALLOWANCE = 16
SATURATION_READINGS = 3
MIX = throughput.MIX
MINUTE_COLUMNS = ["minute", "RSS", "open fds", "threads", "200s", "p99", "ms / UNet row", "rows / step"]


@dataclass(frozen=True)
class Work:
    """The engine's own account of a minute, from its /metrics counters: how long a UNet row took and how
    many rows a step carried. Larger batches cost less per row, so a minute whose rows took longer while
    its batches were no smaller ran on a slower machine (or a slower server), not under more load."""

    ms_per_row: float
    rows_per_step: float

    @staticmethod
    def between(before: MetricsSnapshot, after: MetricsSnapshot) -> Work | None:
        def delta(name: str) -> float:
            return after.value(name) - before.value(name)

        rows, steps = delta("ddpm_unet_evaluations_total"), delta("ddpm_step_duration_seconds_count")
        if rows <= 0 or steps <= 0:
            return None
        ms_per_row = 1000 * delta("ddpm_step_duration_seconds_sum") / rows
        return Work(ms_per_row, delta("ddpm_batch_rows_sum") / steps)


@dataclass
class Minute:
    index: int
    rss: int
    fds: int
    threads: int
    latencies: list[float] = field(default_factory=list)
    work: Work | None = None  # what the server's engine did this minute

    @property
    def p99(self) -> float | None:
        ordered = sorted(self.latencies)
        return ordered[max(0, int(0.99 * len(ordered)) - 1)] if ordered else None


@dataclass
class SoakRun:
    outcomes: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    minutes: list[Minute] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)  # latencies since the last sample
    failures: list[str] = field(default_factory=list)  # what each client-side error was, and on what


def proc_counts(pid: int) -> tuple[int, int]:
    """(open file descriptors, threads) of a process, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )
    return fds, threads


async def one_request(client: httpx.AsyncClient, run: SoakRun, index: int, rng: random.Random) -> None:
    body = {"class_label": index % 10, "steps": rng.choice(list(MIX)), "seed": index, "timeout_ms": 30_000}
    stream = rng.random() < STREAM_SHARE
    leave = rng.random() < LEAVE_SHARE
    body["stream"] = stream
    start = time.perf_counter()
    try:
        async with asyncio.timeout(rng.uniform(0.05, 0.5) if leave else None):
            async with client.stream("POST", "/generate", json=body) as response:
                text = (await response.aread()).decode(errors="replace")
        status = str(response.status_code)
        if stream and response.status_code == 200 and "event: result" not in text:
            # Once the status line is sent, an error (a deadline, say) travels as an `error` event: a
            # terminal answer like a 504. A stream with neither event lost its request.
            status = "sse_error" if "event: error" in text else "stream_without_result"
        run.outcomes[status] += 1
        if response.status_code == 200:
            run.pending.append(time.perf_counter() - start)
    except TimeoutError:
        run.outcomes["left" if leave else "client_timeout"] += 1
    except httpx.HTTPError as e:
        run.outcomes[f"client_error:{type(e).__name__}"] += 1
        at = time.perf_counter() - start
        kind = "streamed" if stream else "plain"
        run.failures.append(f"request {index} (K={body['steps']}, {kind}) after {at:.2f} s: {e!r}")


async def drive(server: Server, rate: float, minutes: int, seed: int) -> SoakRun:
    run = SoakRun()
    rng = random.Random(seed)
    # Idle connections expire after 2 s, before the server's keep-alive (DDPM_KEEP_ALIVE_S, once uvicorn's
    # 5 s): a client that reuses a connection at the moment the server closes it gets a reset (the
    # keep-alive race), which would count as a lost request.
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=2.0)
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=60.0, limits=limits, trust_env=False
    ) as client:
        tasks: set[asyncio.Task[None]] = set()
        counters = await server.metrics_async(client)
        start = time.perf_counter()
        next_sample = start + SAMPLE_S
        next_arrival = start + rng.expovariate(rate)
        end = start + minutes * SAMPLE_S
        while time.perf_counter() < end:
            now = time.perf_counter()
            if now >= next_sample:
                fds, threads = proc_counts(server.pid)
                latest = await server.metrics_async(client)
                work = Work.between(counters, latest)
                counters = latest
                run.minutes.append(
                    Minute(len(run.minutes) + 1, server.rss_bytes(), fds, threads, run.pending, work)
                )
                run.pending = []
                next_sample += SAMPLE_S
            if now >= next_arrival:
                task = asyncio.create_task(one_request(client, run, run.sent, rng))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                run.sent += 1
                next_arrival += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, min(next_arrival, next_sample, end) - time.perf_counter()))
        await asyncio.gather(*tasks)
        fds, threads = proc_counts(server.pid)  # the last minute, its stragglers included
        work = Work.between(counters, await server.metrics_async(client))
        run.minutes.append(Minute(len(run.minutes) + 1, server.rss_bytes(), fds, threads, run.pending, work))
    return run


def markdown(
    run: SoakRun, rate: float, saturation: float, how: str, minutes: int, load: tuple[float, float]
) -> str:
    rows = [
        (
            m.index, report.mib(m.rss), m.fds, m.threads, len(m.latencies), report.seconds(m.p99),
            f"{m.work.ms_per_row:.2f}" if m.work else "-", f"{m.work.rows_per_step:.1f}" if m.work else "-",
        )
        for m in run.minutes
    ]  # fmt: skip
    base = run.minutes[min(4, len(run.minutes) - 1)]
    last = run.minutes[-1]
    growth = last.rss / base.rss - 1
    early = run.minutes[:5]
    fds_ok = last.fds <= max(m.fds for m in early) + FD_ALLOWANCE
    threads_ok = last.threads <= max(m.threads for m in early)
    ref = [x for m in run.minutes[4:10] for x in m.latencies]
    tail = [x for m in run.minutes[-5:] for x in m.latencies]
    drift = _p99(tail) / _p99(ref) - 1 if ref and tail else float("nan")
    answered = sum(run.outcomes.values())
    lost = (
        run.sent
        - answered
        + sum(n for k, n in run.outcomes.items() if k.startswith("client_") or k.startswith("stream_"))
    )
    outcomes = ", ".join(f"{k} {n}" for k, n in sorted(run.outcomes.items()))
    # The same p99 over every five-minute window: how far one window moves from the next on its own.
    windows = [run.minutes[i : i + 5] for i in range(0, len(run.minutes), 5)]
    window_rows = [
        (f"{w[0].index}-{w[-1].index}", sum(len(m.latencies) for m in w), report.seconds(_p99(pooled)))
        for w in windows
        if (pooled := [x for m in w for x in m.latencies])
    ]
    failures = "\n".join(f"- {failure}" for failure in run.failures) or "Client-side errors: none."
    return "\n\n".join(
        [
            f"## Soak: {minutes} minutes at {LOAD:.0%} of saturation",
            f"Open-loop Poisson arrivals at {rate:.2f} req/s ({LOAD:.0%} of {saturation:.2f} req/s: "
            f"{how}), K "
            f"uniform over {sorted(MIX)}, `timeout_ms=30000`, {STREAM_SHARE:.0%} streamed, "
            f"{LEAVE_SHARE:.0%} of clients leaving after 0.05-0.5 s. One default server on the bundled "
            "model. Load average "
            f"{load[0]:.2f} → {load[1]:.2f}. Requests: {run.sent} sent; {outcomes}.",
            report.table(MINUTE_COLUMNS, rows),
            report.table(["minutes", "200s", "p99"], window_rows),
            failures,
            report.bar(
                f"RSS growth < {RSS_BAR:.0%} from minute 5 to the end", growth < RSS_BAR, f"**{growth:+.1%}**"
            ),
            report.bar(
                "descriptors and threads flat",
                fds_ok and threads_ok,
                f"fds {max(m.fds for m in early)} (max of minutes 1-5) → {last.fds}; threads "
                f"{max(m.threads for m in early)} → {last.threads}",
            ),
            report.bar(
                f"p99 drift < {P99_BAR:.0%}",
                abs(drift) < P99_BAR,
                f"**{drift:+.1%}** (last 5 min vs minutes 5-10)",
            ),
            report.bar("no request lost", lost == 0, f"{lost} of {run.sent}"),
        ]
    )


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(0.99 * len(ordered)) - 1)]


def plot(run: SoakRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [m.index for m in run.minutes]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.5))
    axes[0].plot(minutes, [m.rss / 2**20 for m in run.minutes])
    axes[0].set(title="server RSS (MiB)", xlabel="minute")
    axes[1].plot(minutes, [m.fds for m in run.minutes], label="open fds")
    axes[1].plot(minutes, [m.threads for m in run.minutes], label="threads")
    axes[1].set(title="descriptors and threads", xlabel="minute")
    axes[1].legend()
    axes[2].plot(minutes, [m.p99 or float("nan") for m in run.minutes])
    axes[2].set(title="p99 latency of 200s (s)", xlabel="minute")
    axes[3].plot(minutes, [m.work.ms_per_row if m.work else float("nan") for m in run.minutes])
    axes[3].set(title="server ms per UNet row (machine speed)", xlabel="minute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def streamed_share(index: int) -> dict[str, object]:
    """The soak's share of streamed requests, deterministic per index, for the saturation runs."""
    return {"stream": index % round(1 / STREAM_SHARE) == 0}


def measured_saturation(readings: int = SATURATION_READINGS) -> tuple[float, str]:
    """Saturation of the soak's own mix (streamed answers cost the server and the client more than PNGs),
    as the median of several fresh-server readings: one 45 s reading on this machine varies by ±15 %
    (8.05-10.68 req/s seen across runs), and the first soak was set at 70 % of its one (highest) reading."""
    rates = [
        throughput.run(
            BUNDLED, warmup_s=15, window_s=45, seed=seed, fields=streamed_share, compiled_sizes=COMPILED_SIZES
        ).requests_per_s
        for seed in range(1, readings + 1)
    ]
    how = (
        f"the median of {readings} saturation readings of this mix, "
        + ", ".join(f"{r:.2f}" for r in rates)
        + " req/s, each a fresh default server, 32 closed-loop clients, 45 s window"
    )
    return statistics.median(rates), how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--saturation", type=float, help="req/s at saturation; default: measured first")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    pin_threads()
    saturation, how = (args.saturation, "given") if args.saturation else measured_saturation()
    rate = LOAD * saturation
    start_load = load_average()
    with Server(ServerConfig(BUNDLED)) as server:
        server.wait_compiled()
        run = asyncio.run(drive(server, rate, args.minutes, seed=11))
    text = markdown(run, rate, saturation, how, args.minutes, (start_load, load_average()))
    if args.plot:
        plot(run, args.plot)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
