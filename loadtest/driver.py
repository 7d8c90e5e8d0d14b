"""HTTP load against POST /generate: open-loop Poisson arrivals, or a fixed number of closed-loop clients.

Our own driver rather than Locust or k6: Locust's users are closed-loop (each waits for its response
before sending again), so a slow server lowers the offered load and hides its own queueing (coordinated
omission), and k6 would add a second runtime to the project. Open loop here means every arrival time is
drawn up front from a seeded RNG and each request is sent at its time whatever the earlier ones are doing;
its latency runs from the scheduled arrival, not from when the driver got round to sending it.

Every run is bounded twice: by the number of requests and by wall time. A request still pending at the
wall cap is cancelled (the server sees the disconnect and frees its slot) and recorded as censored, so
every request ends with exactly one record.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

TERMINAL_STATUSES = (200, 429, 504)  # the answers an overloaded server is allowed to give
MAX_CONNECTIONS = 1024  # never the bottleneck: an open-loop driver must not queue in its own pool
NUM_CLASSES = 10  # every benchmarked model (fmnist-small, tiny-test) has ten classes
BodyFields = Callable[[int], Mapping[str, object]]  # request index -> extra body fields
Detail = Callable[[httpx.Response], Mapping[str, object]]  # a 200's response -> what to keep of it


@dataclass(frozen=True)
class Arrival:
    index: int
    at_s: float  # offset from the start of the run
    steps: int


@dataclass(frozen=True)
class Outcome:
    """One request's single record."""

    index: int
    steps: int
    scheduled_s: float  # when it was due (offset from the start of the run)
    send_lag_s: float  # how late the driver sent it: large values mean the driver, not the server, lagged
    latency_s: float  # scheduled arrival -> full response, or -> censoring
    finished_s: float  # offset when this record was made
    status: int | None = None  # HTTP status; None when there was no HTTP answer
    error: str | None = None  # client-side failure (timeout, connection error): its exception name
    censored: bool = False  # still pending at the wall cap, so cancelled by the driver
    detail: Mapping[str, object] | None = None  # what the run's `detail` kept of a 200's response

    @property
    def kind(self) -> str:
        """'200', '429', '504', 'http_<other status>', 'client_error' or 'censored'."""
        if self.censored:
            return "censored"
        if self.status is None:
            return "client_error"
        return str(self.status) if self.status in TERMINAL_STATUSES else f"http_{self.status}"


def poisson_arrivals(
    rate_per_s: float, duration_s: float, mix: Mapping[int, float], seed: int, max_requests: int
) -> list[Arrival]:
    """Arrivals of a Poisson process over [0, duration_s), K drawn from `mix` (K -> weight)."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate_per_s}, {duration_s}")
    rng = random.Random(seed)
    steps, weights = list(mix), list(mix.values())
    arrivals: list[Arrival] = []
    at = rng.expovariate(rate_per_s)
    while at < duration_s and len(arrivals) < max_requests:
        arrivals.append(Arrival(len(arrivals), at, rng.choices(steps, weights)[0]))
        at += rng.expovariate(rate_per_s)
    return arrivals


@dataclass
class _Run:
    """Shared by the requests of one run: the client, the clock and the body fields."""

    client: httpx.AsyncClient
    start: float
    timeout_ms: int | None
    records: list[Outcome] = field(default_factory=list)  # a list, so a double record would show
    fields: BodyFields | None = None  # more body fields per request index (e.g. a sampler mix)
    detail: Detail | None = None  # what to keep of each 200's response (e.g. the K it ran)

    def now(self) -> float:
        return time.perf_counter() - self.start

    async def send(self, arrival: Arrival) -> None:
        sent = self.now()
        body: dict[str, object] = {
            "class_label": arrival.index % NUM_CLASSES,
            "steps": arrival.steps,
            "seed": arrival.index,
        }
        if self.timeout_ms is not None:
            body["timeout_ms"] = self.timeout_ms
        if self.fields is not None:
            body.update(self.fields(arrival.index))
        status: int | None = None
        error: str | None = None
        censored = False
        detail: Mapping[str, object] | None = None
        try:
            response = await self.client.post("/generate", json=body)
            status = response.status_code
            if status == 200 and self.detail is not None:
                detail = self.detail(response)
        except Exception as e:  # any failure on the client side (timeout, reset, protocol) is one record
            error = type(e).__name__
        except asyncio.CancelledError:
            censored = True
            raise
        finally:
            now = self.now()
            self.records.append(
                Outcome(
                    index=arrival.index,
                    steps=arrival.steps,
                    scheduled_s=arrival.at_s,
                    send_lag_s=max(0.0, sent - arrival.at_s),
                    latency_s=now - arrival.at_s,
                    finished_s=now,
                    status=status,
                    error=error,
                    censored=censored,
                    detail=detail,
                )
            )

    def unsent(self, arrival: Arrival) -> Outcome:
        """The record of an arrival whose task was cancelled before it ever ran."""
        now = self.now()
        return Outcome(
            arrival.index,
            arrival.steps,
            arrival.at_s,
            now - arrival.at_s,
            now - arrival.at_s,
            now,
            error="not sent",
            censored=True,
        )


def _client(base_url: str, client_timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=64)
    timeout = httpx.Timeout(client_timeout_s, pool=None)
    # trust_env=False: no proxy from the environment; the traffic stays on loopback.
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False)


async def _finish(tasks: Sequence[asyncio.Task[None]], wait_s: float) -> None:
    """Wait up to wait_s for the tasks, then cancel the rest (they record themselves as censored)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, wait_s))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def open_loop(
    base_url: str,
    arrivals: Sequence[Arrival],
    *,
    wall_cap_s: float,
    client_timeout_s: float,
    timeout_ms: int | None = None,
    start: float | None = None,
    fields: BodyFields | None = None,
    detail: Detail | None = None,
) -> list[Outcome]:
    """Send each arrival at its time; return one Outcome per arrival, in arrival order. `start` (a
    time.perf_counter() value, default now) is the origin of the schedule and of every record;
    `fields(index)` adds body fields to request `index`, `detail` keeps part of each 200's response."""
    if arrivals and arrivals[-1].at_s >= wall_cap_s:
        raise ValueError(f"the last arrival ({arrivals[-1].at_s:.1f} s) is past the wall cap {wall_cap_s} s")
    async with _client(base_url, client_timeout_s) as client:
        origin = time.perf_counter() if start is None else start
        run = _Run(client, origin, timeout_ms, fields=fields, detail=detail)
        tasks = []
        for arrival in arrivals:
            delay = arrival.at_s - run.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run.send(arrival)))
        await _finish(tasks, wall_cap_s - run.now())
        recorded = {o.index for o in run.records}
        run.records += [run.unsent(a) for a in arrivals if a.index not in recorded]
    return sorted(run.records, key=lambda o: o.index)


async def closed_loop(
    base_url: str,
    *,
    concurrency: int,
    mix: Mapping[int, float],
    seed: int,
    duration_s: float,
    max_requests: int,
    client_timeout_s: float,
    drain_s: float = 0.0,
    timeout_ms: int | None = None,
    start: float | None = None,
    fields: BodyFields | None = None,
) -> list[Outcome]:
    """`concurrency` clients, each sending its next request as soon as its last one is answered, for
    duration_s; requests still pending drain_s later are cancelled (censored). Keeps every slot busy.
    `start` as in open_loop; `fields(index)` adds body fields to request `index`."""
    rng = random.Random(seed)
    steps, weights = list(mix), list(mix.values())
    counter = itertools.count()
    async with _client(base_url, client_timeout_s) as client:
        run = _Run(client, time.perf_counter() if start is None else start, timeout_ms, fields=fields)

        async def client_loop() -> None:
            while run.now() < duration_s:
                index = next(counter)
                if index >= max_requests:
                    return
                await run.send(Arrival(index, run.now(), rng.choices(steps, weights)[0]))

        tasks = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
        await _finish(tasks, duration_s + drain_s - run.now())
    return sorted(run.records, key=lambda o: o.index)


@dataclass(frozen=True)
class Tally:
    """How the requests of a run ended; `consistent` is the bookkeeping check of the smoke test."""

    sent: int
    kinds: dict[str, int]
    duplicates: int  # indices recorded more than once (must be 0)

    @property
    def answered(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind.isdigit())

    @property
    def client_errors(self) -> int:
        return self.kinds.get("client_error", 0)

    @property
    def censored(self) -> int:
        return self.kinds.get("censored", 0)

    @property
    def non_terminal_http(self) -> int:
        """HTTP answers other than 200 / 429 / 504."""
        return sum(n for kind, n in self.kinds.items() if kind.startswith("http_"))

    @property
    def consistent(self) -> bool:
        return self.duplicates == 0 and sum(self.kinds.values()) == self.sent

    def count(self, kind: str) -> int:
        return self.kinds.get(kind, 0)


def tally(outcomes: Sequence[Outcome]) -> Tally:
    indices = Counter(o.index for o in outcomes)
    return Tally(
        sent=len(indices),
        kinds=dict(sorted(Counter(o.kind for o in outcomes).items())),
        duplicates=sum(n - 1 for n in indices.values()),
    )


@dataclass(frozen=True)
class Percentile:
    seconds: float
    lower_bound: bool  # censored requests may lie at or below it: the true value is at least this


def percentile(outcomes: Sequence[Outcome], q: float) -> Percentile | None:
    """Nearest-rank percentile of the latencies of 200s and censored requests (censored latencies are
    lower bounds, so the result is exact only when every censored value lies above it)."""
    pool = sorted((o.latency_s, o.censored) for o in outcomes if o.status == 200 or o.censored)
    if not pool:
        return None
    rank = max(1, min(len(pool), math.ceil(q * len(pool) / 100 - 1e-9)))  # 1-based nearest rank
    value = pool[rank - 1][0]
    return Percentile(value, any(censored and lat <= value for lat, censored in pool))
