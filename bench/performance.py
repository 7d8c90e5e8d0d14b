"""Run every benchmark side by side on one random model and write docs/performance.md.

    python -m bench.performance --out docs/performance.md

Order: (a) throughput, whose measured ceiling and saturation rate size the later runs, (c) idle request,
(b) mixed-K latency, (d) overload. Each part can also run alone: python -m bench.served_vs_ceiling |
bench.idle_vs_bare | loadtest.mixed_latency | loadtest.overload | bench.ceiling (see --help).

Why the orchestrator lives here and not in loadtest/: two bars divide an HTTP number by an in-process one
measured side by side, interleaved with it ((a) served ÷ the raw ceiling timed just before and after the
served run; (c) HTTP idle ÷ the bare loop, alternating request by request). Only a process that imports
the engine can take the in-process half, so the combining happens in bench/, which calls loadtest's HTTP
scenarios as a library (loadtest.throughput, loadtest.idle, loadtest.mixed_latency, loadtest.overload)
and adds its own in-process halves. Imports point bench -> loadtest -> (HTTP only), never back: loadtest
stays free of the engine and the backends, and the measurements stay in one process and one run, exactly
as before (a child process per ceiling run would add start-up time and could not alternate with HTTP).
The one way back is a command line, not an import: loadtest.mixed_latency and loadtest.overload, run
alone without --capacity / --saturation, size their rates from `python -m bench.ceiling --json` in a
child process (loadtest/raw_ceiling.py); here the rates come from (a) instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench import gpu_section, idle_vs_bare, served_vs_ceiling
from bench.model import random_model
from loadtest import mixed_latency, overload, report
from loadtest.machine import Machine, describe, pin_threads

T = TypeVar("T")


def _phase(name: str, timings: dict[str, float], fn: Callable[[], T]) -> T:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    print(f"[bench] {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    return result


def _summary(
    a: served_vs_ceiling.ThroughputResult,
    b: mixed_latency.MixedResult,
    c: idle_vs_bare.IdleResult,
    d: overload.OverloadResult,
) -> str:
    def verdict(met: bool) -> str:
        return "met" if met else "**NOT met**"

    ratio_b = b.ratio
    measured_b = "unknown" if ratio_b is None else ("≥ " if ratio_b[1] else "") + f"{ratio_b[0]:.1f}×"
    t = d.tally
    rows = [
        (
            "(a) served ≥ 0.85 × raw UNet ceiling",
            f"{a.ratio:.3f} (per CPU-second {a.served_per_cpu_s / a.ceiling_per_cpu_s:.3f})",
            verdict(a.met),
        ),
        ("(b) K=10 p50: run-to-completion ÷ continuous ≥ 5", measured_b, verdict(b.met)),
        ("(c) idle K=50: HTTP ÷ bare loop ≤ 1.15", f"{c.ratio:.3f}", verdict(c.met)),
        (
            "(d) one terminal answer per request, none lost, 0 client errors",
            f"{t.sent} sent: {t.count('200')} × 200, {t.count('429')} × 429, {t.count('504')} × 504; "
            f"{t.client_errors} client errors",
            verdict(d.answers_ok),
        ),
        ("(d) server RSS growth under overload < 10 %", f"{d.rss_growth:+.1%}", verdict(d.rss_growth < 0.10)),
        (
            "GPU: fp16 + compile + CUDA graphs vs fp32 eager, MFU, K=250 fp16 finiteness",
            "not measured (no GPU)",
            "–",
        ),
    ]
    return "## Summary\n\n" + report.table(["Bar", "Measured", "Verdict"], rows)


def _setup(machine: Machine, params: int, timings: dict[str, float]) -> str:
    rows = [
        *machine.rows(),
        (
            "Model",
            f"randomly initialised `fmnist-small` (`ddpm init --preset fmnist-small`): {params / 1e6:.2f}M "
            "parameters, 28×28×1, 10 classes, T=4000, learned σ — the bundled model's architecture and "
            "compute, with weights that no training run rewrites",
        ),
        ("Network", "fp32, eager (torch.compile and CUDA graphs are CUDA-only defaults)"),
        ("Servers", "one fresh `ddpm-serve` process per run, 127.0.0.1, `DDPM_TORCH_THREADS=1`"),
        ("Phase run times", ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())),
    ]
    return "\n\n".join(
        [
            "## Machine and settings",
            report.table(["", ""], rows),
            "Two cores, one of them taken by a `ddpm train` run (1 thread) for the whole benchmark, so "
            "every benchmark process and server runs torch with one intra-op thread and the server, the "
            "load generator and the in-process baselines share the other core. Absolute timings on such "
            "a machine drift with whatever else runs (the load average is given per run); the bars are "
            "ratios measured side by side in this one run on the same model and thread count.",
        ]
    )


RERUN = """## How to rerun

```
.venv/bin/python -m bench.performance --out docs/performance.md    # everything, ~13 min on 2 cores
.venv/bin/python -m bench.served_vs_ceiling --window 150            # (a) alone, prints its section
.venv/bin/python -m loadtest.mixed_latency --duration 120 --cap 200 # (b) alone
.venv/bin/python -m bench.idle_vs_bare --repeats 20                 # (c) alone
.venv/bin/python -m loadtest.overload --duration 60                # (d) alone
.venv/bin/python -m bench.gpu_check --out gpu.md                   # on a CUDA machine (see GPU)
.venv/bin/python -m loadtest.triton_bench                        # gateway over Triton vs embedded
.venv/bin/python -m loadtest.replay --base-url URL --out DIR      # any deployment, any K mix
```

Every server is started on 127.0.0.1 and stopped by its PID; each load run is bounded in request count
and wall time. `tests/loadtest/test_bench_smoke.py` (marked slow) checks the driver's bookkeeping against a
real server on the tiny-test model, not speed."""


def main() -> None:
    parser = argparse.ArgumentParser(description="Run all benchmarks and write the performance report.")
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--window", type=float, default=150.0, help="(a) measurement window, seconds")
    parser.add_argument("--mixed-duration", type=float, default=120.0, help="(b) seconds of arrivals")
    parser.add_argument("--mixed-cap", type=float, default=200.0, help="(b) wall cap per mode, seconds")
    parser.add_argument("--repeats", type=int, default=20, help="(c) runs of each path")
    parser.add_argument("--overload-duration", type=float, default=overload.DURATION_S)
    args = parser.parse_args()

    started = time.perf_counter()
    pin_threads()
    machine = describe()
    model_dir, model = random_model()
    params = sum(p.numel() for p in model.net.parameters())
    timings: dict[str, float] = {}
    a = _phase(
        "(a) throughput", timings, lambda: served_vs_ceiling.run(model_dir, model, window_s=args.window)
    )
    c = _phase("(c) idle", timings, lambda: idle_vs_bare.run(model_dir, model, repeats=args.repeats))
    b = _phase(
        "(b) mixed latency",
        timings,
        lambda: mixed_latency.run(model_dir, a.served, duration_s=args.mixed_duration, cap_s=args.mixed_cap),
    )
    d = _phase(
        "(d) overload",
        timings,
        lambda: overload.run(model_dir, a.requests_per_s, duration_s=args.overload_duration),
    )
    total = time.perf_counter() - started
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    document = "\n\n".join(
        [
            "# Performance",
            f"Written by `python -m bench.performance` on {when} (total benchmark run time "
            f"{total / 60:.1f} min). Generated: rerun rather than edit.",
            _summary(a, b, c, d),
            _setup(machine, params, timings),
            a.markdown(),
            b.markdown(),
            c.markdown(),
            d.markdown(),
            gpu_section.MARKDOWN,
            RERUN,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document + "\n")
    print(f"[bench] wrote {args.out} ({total / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
