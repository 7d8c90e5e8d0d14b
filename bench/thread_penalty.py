"""The same network call from the main thread and from a worker thread (where the engine calls it).

    python -m bench.thread_penalty --precision bf16 --compiled

Measured on the 2-core development VM (issue 18, docs/performance.md): the compiled bf16 package at
batch 16 ran in 39-45 ms from the main thread and 87-216 ms from a worker thread; eager networks show
the same gap; with one intra-op thread the two agree. The engine's own thread paid it on every step.

The cause (found later in issue 18): the main thread's calls leave it an OpenMP team, and with more
OpenMP threads than cores libgomp stops spinning, so the worker thread's team sleeps between parallel
regions. The server now confines every thread but the engine's to one intra-op thread
(service.engine.threads.confine_to_one_thread); `--confine-main` does the same here, and the gap closes.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from bench.model import BUNDLED_MODEL
from bench.variants import Networks, Variant
from service.engine.settings import Precision
from service.engine.threads import confine_to_one_thread, machine_threads


def median_call_s(denoise: object, batch: int, calls: int) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    t = torch.rand(batch, generator=generator) * 1000
    y = torch.randint(0, 10, (batch,), generator=generator)
    times = []
    with torch.no_grad():
        for i in range(calls + 5):  # five untimed calls first
            start = time.perf_counter()
            denoise(x, t, y)  # type: ignore[operator]
            if i >= 5:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", type=Precision, default=Precision.BF16)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--confine-main", action="store_true", help="the main thread keeps no team")
    args = parser.parse_args()
    if args.confine_main:  # before anything runs, so the main thread never starts a team
        confine_to_one_thread()
    variant = Variant(machine_threads(), args.compiled, args.precision)
    denoise = Networks(BUNDLED_MODEL).get(variant, args.batch).denoiser
    print(f"{variant.label}, batch {args.batch}")
    if not args.confine_main:
        print(f"main thread:   {median_call_s(denoise, args.batch, args.calls) * 1000:.1f} ms")
    result: list[float] = []

    def in_worker() -> None:
        torch.set_num_threads(variant.threads)
        result.append(median_call_s(denoise, args.batch, args.calls))

    worker = threading.Thread(target=in_worker)
    worker.start()
    worker.join()
    print(f"worker thread: {result[0] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
