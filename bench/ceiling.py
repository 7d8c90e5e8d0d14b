"""Raw batched UNet throughput: the ceiling a served engine is compared with.

N forward calls of the model's denoiser at one batch size, each row with its own timestep and label, in
this process with nothing around it (no scheduler, no sampler step, no HTTP). Throughput is images x
steps per second (one row of one call = one UNet evaluation).

    python -m bench.ceiling --batch 1 16              # the random fmnist-small model, a line per batch
    python -m bench.ceiling --model DIR --batch 16 --json

`--json` prints one object per batch size (batch, calls, evals_per_s, evals_per_s_median,
evals_per_cpu_s, median_call_s): what loadtest.raw_ceiling reads from a child process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.model import random_model
from bench.variants import Networks, Variant, variants
from loadtest.machine import pin_threads
from service.model.store import LoadedModel, load_model

RESCALED_T = 1000.0  # with rescale_timesteps the network sees t in [0, 1000), as the engine feeds it


@dataclass(frozen=True)
class Ceiling:
    batch: int
    calls: int
    total_s: float
    median_call_s: float
    call_s: tuple[float, ...]
    cpu_s: float  # CPU time of the calls: unlike wall time, other processes on the core do not inflate it

    @property
    def evals_per_s(self) -> float:
        """images x steps per second over all calls (mean, like served throughput over a window)."""
        return self.batch * self.calls / self.total_s

    @property
    def evals_per_cpu_s(self) -> float:
        return self.batch * self.calls / self.cpu_s

    @property
    def evals_per_s_median(self) -> float:
        """From the median call: what the core gives when nothing else competes for it."""
        return self.batch / self.median_call_s


def pooled_median_evals_per_s(*runs: Ceiling) -> float:
    """The ceiling from the median call of several runs at one batch size."""
    batch = {run.batch for run in runs}
    assert len(batch) == 1, f"runs at different batch sizes: {batch}"
    return batch.pop() / statistics.median([t for run in runs for t in run.call_s])


@torch.no_grad()
def measure(model: LoadedModel, batch: int, calls: int, warmup: int = 3, seed: int = 0) -> Ceiling:
    generator = torch.Generator().manual_seed(seed)
    manifest = model.manifest
    shape = (batch, manifest.image_channels, manifest.image_size, manifest.image_size)
    x = torch.randn(shape, generator=generator)
    diffusion = manifest.diffusion
    t_max = RESCALED_T if diffusion.rescale_timesteps else float(diffusion.num_timesteps)
    t = torch.rand(batch, generator=generator) * t_max  # per-row timesteps
    y = None
    if manifest.num_classes is not None:
        y = torch.randint(0, manifest.num_classes, (batch,), generator=generator)
    for _ in range(warmup):
        model.denoiser(x, t, y)
    times = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        model.denoiser(x, t, y)
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    return Ceiling(batch, calls, sum(times), statistics.median(times), tuple(times), cpu)


def search(
    networks: Networks, batch: int, calls: int = 20, candidates: list[Variant] | None = None
) -> list[tuple[Variant, Ceiling]]:
    """Every variant (threads × compiled × precision) at `batch`, fastest first by the median call: the
    machine's ceiling is the first. Leaves torch's thread count as it found it."""
    before = torch.get_num_threads()
    results = []
    try:
        for variant in candidates or variants():
            model = networks.get(variant, batch)
            torch.set_num_threads(variant.threads)
            results.append((variant, measure(model, batch, calls)))
    finally:
        torch.set_num_threads(before)
    return sorted(results, key=lambda item: item[1].median_call_s)


def measure_variant(networks: Networks, variant: Variant, batch: int, calls: int) -> Ceiling:
    before = torch.get_num_threads()
    torch.set_num_threads(variant.threads)
    try:
        return measure(networks.get(variant, batch), batch, calls)
    finally:
        torch.set_num_threads(before)


def summary(c: Ceiling) -> dict[str, float]:
    """The readings of one run, as `--json` prints them."""
    return {
        "batch": c.batch,
        "calls": c.calls,
        "evals_per_s": c.evals_per_s,
        "evals_per_s_median": c.evals_per_s_median,
        "evals_per_cpu_s": c.evals_per_cpu_s,
        "median_call_s": c.median_call_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw batched UNet throughput (random fmnist-small).")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--model", type=Path, help="a model folder; default: random fmnist-small")
    parser.add_argument("--json", action="store_true", help="one JSON object per batch size on stdout")
    args = parser.parse_args()
    pin_threads()
    model = load_model(args.model) if args.model else random_model()[1]
    for batch in args.batch:
        c = measure(model, batch, args.calls)
        if args.json:
            print(json.dumps(summary(c)))
            continue
        median_ms = c.median_call_s * 1000
        print(f"batch {batch}: {c.evals_per_s:.1f} images*steps/s ({median_ms:.1f} ms/call median)")


if __name__ == "__main__":
    main()
