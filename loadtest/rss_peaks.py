"""RSS against peak concurrency: does the server's memory grow with time, or with the largest burst so far?

The soak samples RSS once a minute under a random load, so a step up in RSS could be a leak or a high-water
mark: memory the process took for the most requests it ever held at once (buffers, Python objects, the
allocator's arenas) and keeps for the next peak. This separates the two. One default server on the bundled
model gets rounds of bursts, each `c` concurrent requests (K from the soak's mix, a third streamed), and
RSS is read after every round once the server is idle again. A leak grows at every round, repeated sizes
included; a high-water mark grows only when a burst is larger than every earlier one.

    python -m loadtest.rss_peaks --rounds 4,4,4,16,16,16,48,48,48,16,16,16
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httpx

from loadtest.adaptive import BUNDLED
from loadtest.server import Server, ServerConfig
from loadtest.soak import MIX, STREAM_SHARE

IDLE_S = 2.0  # after a burst, before RSS is read: the engine has finished and freed its rows


async def burst(client: httpx.AsyncClient, size: int, rng: random.Random) -> int:
    """`size` requests at once; how many got their image."""

    async def one(index: int) -> bool:
        body = {
            "class_label": index % 10,
            "steps": rng.choice(list(MIX)),
            "seed": index,
            "stream": rng.random() < STREAM_SHARE,
            "timeout_ms": 120_000,
        }
        async with client.stream("POST", "/generate", json=body) as response:
            text = (await response.aread()).decode(errors="replace")
        return response.status_code == 200 and (not body["stream"] or "event: result" in text)

    return sum(await asyncio.gather(*(one(i) for i in range(size))))


async def drive(server: Server, rounds: list[int], seed: int) -> list[tuple[int, int, float, int]]:
    """Per round: (concurrency, images returned, seconds, RSS after)."""
    rng = random.Random(seed)
    rows = []
    limits = httpx.Limits(max_connections=max(rounds), max_keepalive_connections=max(rounds))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=180.0, limits=limits) as client:
        for size in rounds:
            start = time.perf_counter()
            ok = await burst(client, size, rng)
            seconds = time.perf_counter() - start
            await asyncio.sleep(IDLE_S)
            rows.append((size, ok, seconds, server.rss_bytes()))
    return rows


def markdown(rows: list[tuple[int, int, float, int]], start_rss: int) -> str:
    lines = [
        f"RSS before the first burst (compiled, idle): {start_rss / 2**20:.1f} MiB",
        "",
        "| round | concurrent requests | images | seconds | RSS after | change | new peak? |",
        "|---|---|---|---|---|---|---|",
    ]
    previous, peak = start_rss, 0
    for index, (size, ok, seconds, rss) in enumerate(rows, 1):
        new_peak = size > peak
        peak = max(peak, size)
        change = (rss - previous) / 2**20
        lines.append(
            f"| {index} | {size} | {ok} | {seconds:.1f} | {rss / 2**20:.1f} MiB | {change:+.1f} MiB | "
            f"{'yes' if new_peak else 'no'} |"
        )
        previous = rss
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="4,4,4,16,16,16,48,48,48,16,16,16", help="burst sizes, in order")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rounds = [int(size) for size in args.rounds.split(",")]
    if not rounds or min(rounds) < 1:
        raise SystemExit("--rounds: a comma-separated list of burst sizes >= 1")
    with Server(ServerConfig(BUNDLED)) as server:
        server.wait_compiled()
        start_rss = server.rss_bytes()
        rows = asyncio.run(drive(server, rounds, args.seed))
    print(markdown(rows, start_rss))


if __name__ == "__main__":
    main()
