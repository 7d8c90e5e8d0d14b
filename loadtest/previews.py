"""What previews cost: served throughput at saturation with previews on vs off, on one server, alternating.

Every request streams (stream=true), so the only difference is the `preview` events: in "on" phases each
request asks `preview_every=1`, the most a client can ask, which the server raises to K/MAX_PREVIEWS (at
most 10 previews an image: the K = 10 images of the mix get 9, the K = 100 ones 9). One default server
on the bundled model (compiled before the run starts), saturated by 32 closed-loop clients over K uniform
in {10, 25, 50, 100}, as the served-throughput benchmark does.

Why phases on one server, not one server per side: this machine's speed drifts by a third within ten
minutes (measured here: 11.5 -> 7.0 req/s with nothing changed), so two sides measured one after the
other compare two machines. Phases of PHASE_S seconds alternate off / on many times; a phase counts the
K of the 200s that finish inside it, were sent inside it (so carry its setting), and finish after its
first SETTLE_S seconds (when requests of the previous phase have left). Drift then falls on both sides.

Bar (issue 16): previews on >= 0.95 x previews off.

    python -m loadtest.previews --out docs/previews.md
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import driver, report, throughput
from loadtest.adaptive import BUNDLED
from loadtest.machine import load_average, pin_threads
from loadtest.server import Server, ServerConfig

BAR = 0.95
PHASE_S = 30.0
SETTLE_S = 8.0
WARMUP_S = 15.0
CONCURRENCY = 32


@dataclass(frozen=True)
class Phase:
    index: int
    previews: bool
    completed: int
    evals: int  # sum of K of the counted 200s

    @property
    def rate(self) -> float:
        return self.evals / (PHASE_S - SETTLE_S)


def phase_of(offset_s: float) -> int:
    return int((offset_s - WARMUP_S) // PHASE_S)


def run(phases: int, seed: int = 1) -> tuple[list[Phase], float]:
    """Drive one fresh default server through `phases` alternating phases (off first); returns the
    phases and the seconds the server took to compile before the run."""
    sent_in: dict[int, int] = {}  # request index -> the phase it was sent in

    def fields(index: int) -> dict[str, object]:
        phase = phase_of(time.perf_counter() - start)
        sent_in[index] = phase
        return {"stream": True, "preview_every": 1} if phase >= 0 and phase % 2 == 1 else {"stream": True}

    with Server(ServerConfig(BUNDLED)) as server:
        compiled_s = server.wait_compiled()
        start = time.perf_counter()
        outcomes = asyncio.run(
            driver.closed_loop(
                server.base_url,
                concurrency=CONCURRENCY,
                mix=throughput.MIX,
                seed=seed,
                duration_s=WARMUP_S + phases * PHASE_S,
                max_requests=1_000_000,
                client_timeout_s=300.0,
                start=start,
                fields=fields,
            )
        )
    result = []
    for p in range(phases):
        begin = WARMUP_S + p * PHASE_S
        counted = [
            o
            for o in outcomes
            if o.status == 200
            and sent_in.get(o.index) == p
            and begin + SETTLE_S <= o.finished_s < begin + PHASE_S
        ]
        result.append(Phase(p, p % 2 == 1, len(counted), sum(o.steps for o in counted)))
    return result, compiled_s


def markdown(phases: list[Phase], compiled_s: float, load: tuple[float, float]) -> str:
    on = [p for p in phases if p.previews]
    off = [p for p in phases if not p.previews]
    ratio = sum(p.evals for p in on) / len(on) / (sum(p.evals for p in off) / len(off))
    # Each "on" phase against the mean of its two neighbours: what a drift left over would look like.
    local = [
        p.rate / ((phases[p.index - 1].rate + phases[p.index + 1].rate) / 2)
        for p in on
        if p.index + 1 < len(phases)
    ]
    rows = [(p.index + 1, "on" if p.previews else "off", p.completed, f"{p.rate:.0f}") for p in phases]
    return "\n\n".join(
        [
            "## Previews: served throughput with previews on vs off",
            f"One default server on the bundled model (`{BUNDLED.name}`, compiled: {compiled_s:.0f} s spent "
            f"compiling before the run), {CONCURRENCY} closed-loop clients, K uniform over "
            f"{sorted(throughput.MIX)}, every request streamed. After {WARMUP_S:.0f} s of warm-up, "
            f"{len(phases)} phases of {PHASE_S:.0f} s alternate off / on; on: `preview_every=1` (raised by "
            "the server to its per-image bound, `MAX_PREVIEWS` in service/engine/request.py). A phase "
            "counts the 200s sent and finished in it, after its first "
            f"{SETTLE_S:.0f} s. "
            f"Load average {load[0]:.2f} → {load[1]:.2f}; nothing else ran.",
            report.table(["phase", "previews", "200s counted", "images·steps/s"], rows),
            f"Mean images·steps/s: off {sum(p.rate for p in off) / len(off):.0f}, on "
            f"{sum(p.rate for p in on) / len(on):.0f}: on / off = **{ratio:.3f}**. Each on phase against "
            f"the mean of the off phases beside it: {', '.join(f'{r:.3f}' for r in local)}.",
            report.bar(f"previews on ≥ {BAR:.2f} × off", ratio >= BAR, f"**{ratio:.3f}**"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=17, help="alternating off / on, off first and last")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pin_threads()
    start_load = load_average()
    phases, compiled_s = run(args.phases)
    text = markdown(phases, compiled_s, (start_load, load_average()))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
