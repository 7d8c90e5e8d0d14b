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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import torch

from bench import beside, gpu_section, idle_vs_bare, served_vs_ceiling
from bench.model import bundled_model
from bench.variants import Networks, Variant
from loadtest import adaptive, budgets, mixed_latency, mixed_samplers, overload, report, startup
from loadtest.machine import Machine, describe
from service.engine.buckets import dense_bucket_sizes
from service.engine.compile import resolved_precision
from service.engine.settings import Precision
from service.engine.threads import machine_threads

T = TypeVar("T")


def _phase(name: str, timings: dict[str, float], fn: Callable[[], T]) -> T:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    print(f"[bench] {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    return result


def _summary(r: Results) -> str:
    def verdict(met: bool) -> str:
        return "met" if met else "**NOT met**"

    a, c, b, d = r.a, r.c, r.b, r.d
    ratio_b = b.ratio
    measured_b = "unknown" if ratio_b is None else ("≥ " if ratio_b[1] else "") + f"{ratio_b[0]:.1f}×"
    t = d.tally
    kept = r.budgets
    rows = [
        (
            f"(c) idle K=50 over HTTP, defaults ÷ the fastest bare loop ≤ {idle_vs_bare.BAR}",
            f"{c.ratio:.3f} (bare: {c.best.label})",
            verdict(c.met),
        ),
        (
            f"(a) served at saturation, defaults ÷ the machine's ceiling ≥ {served_vs_ceiling.BAR}",
            f"{a.ratio:.3f} (ceiling: {a.best.label}; per CPU-second "
            f"{a.served_per_cpu_s / a.ceiling_per_cpu_s:.3f})",
            verdict(a.met),
        ),
        (
            f"K=10 beside eight K=250: latency ÷ (10 × raw forward at 9 rows) ≤ {beside.BAR}",
            f"{r.beside.ratio:.3f}",
            verdict(r.beside.met),
        ),
        (
            "  the same two at fp32 (the default on CPUs without native bf16): served with "
            "`DDPM_PRECISION=fp32` is not run; here the default server ÷ the best fp32 setting, K=10 beside "
            "K=250 ÷ the fastest fp32 forward",
            f"{a.served / a.ceiling_at_fp32[1]:.3f} ({a.ceiling_at_fp32[0].label}); "
            f"{r.beside.ratio_at_fp32:.3f}",
            verdict(
                a.served / a.ceiling_at_fp32[1] >= served_vs_ceiling.BAR
                and r.beside.ratio_at_fp32 <= beside.BAR
            ),
        ),
        (
            f"latency budgets kept (idle; 50 % load) ≥ {budgets.BAR}",
            f"{kept.idle.kept_share:.3f}; {kept.loaded.kept_share:.3f}",
            verdict(kept.met),
        ),
        (
            f"start-up to /readyz ≤ {startup.BAR_S:.0f} s",
            f"{r.startup.restart.seconds:.1f} s (restart), {r.startup.first.seconds:.1f} s (first start)",
            verdict(r.startup.met),
        ),
        ("(b) K=10 p50: run-to-completion ÷ continuous ≥ 5", measured_b, verdict(b.met)),
        (
            f"mixed-sampler throughput ÷ single-sampler ≥ {mixed_samplers.BAR}",
            f"{r.samplers.ratio:.3f}",
            verdict(r.samplers.met),
        ),
        (
            "(d) one terminal answer per request, none lost, 0 client errors",
            f"{t.sent} sent: {t.count('200')} × 200, {t.count('429')} × 429, {t.count('504')} × 504; "
            f"{t.client_errors} client errors",
            verdict(d.answers_ok),
        ),
        ("(d) server RSS growth under overload < 10 %", f"{d.rss_growth:+.1%}", verdict(d.rss_growth < 0.10)),
        (
            f"adaptive budgets at 2× saturation: answered in time ≥ {adaptive.IN_TIME_BAR:.0%}, goodput ≥ "
            f"{adaptive.GOODPUT_BAR}, none lost",
            f"{r.adaptive.adaptive.in_time / len(r.adaptive.adaptive.outcomes):.1%}, "
            f"{r.adaptive.adaptive.goodput:.3f}, {r.adaptive.adaptive.lost} lost",
            verdict(r.adaptive.met),
        ),
        (
            "GPU: fp16 + compile + CUDA graphs vs fp32 eager, MFU, K=250 fp16 finiteness",
            "not measured (no GPU)",
            "–",
        ),
    ]
    one = [
        (
            "(a) served ÷ the same ceiling",
            f"{r.a_one.ratio:.3f}",
            f"{r.a.ratio:.3f}",
        ),
        ("(a) served, images·steps/s", f"{r.a_one.served:.1f}", f"{r.a.served:.1f}"),
        (
            "(c) idle K=50 over HTTP, median",
            report.seconds(r.c_one.http_median),
            report.seconds(c.http_median),
        ),
        ("(c) ÷ the fastest bare loop", f"{r.c_one.ratio:.3f}", f"{c.ratio:.3f}"),
    ]
    return "\n\n".join(
        [
            "## Summary",
            report.table(["Bar", "Measured", "Verdict"], rows),
            "The previous configuration beside the defaults (one intra-op thread, eager: what every "
            "benchmark pinned before; same run, same ceiling and bare loop):",
            report.table(["", "`DDPM_TORCH_THREADS=1 DDPM_COMPILE=false`", "defaults"], one),
        ]
    )


def _setup(machine: Machine, params: int, timings: dict[str, float], builds: dict[str, float]) -> str:
    built = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in builds.items()) or "none (all cached)"
    rows = [
        *machine.rows(),
        (
            "Model",
            f"the bundled `fmnist-small` (model_store/): {params / 1e6:.2f}M parameters, 28×28×1, "
            "10 classes, T=4000, learned σ",
        ),
        (
            "Network",
            f"defaults: torso precision {_default_precision().value} (AUTO on this CPU), compiled as "
            "AOTInductor packages (one per batch size 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16), built before "
            "the run into the package cache the servers load from",
        ),
        ("Packages built by this run (cold, per size)", built),
        (
            "Servers",
            "one fresh `ddpm-serve` process per run, 127.0.0.1, default settings unless a section says",
        ),
        ("Phase run times", ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())),
    ]
    return "\n\n".join(
        [
            "## Machine and settings",
            report.table(["", ""], rows),
            "Nothing else ran on the machine during the benchmark (no training run, no test suite): the "
            "benchmark process (load generator and in-process baselines) and one server at a time. "
            "Absolute timings on a 2-core VM drift by ±20 % from run to run; the bars are ratios measured "
            "side by side in this one run.",
        ]
    )


@dataclass(frozen=True)
class Results:
    a: served_vs_ceiling.ThroughputResult
    a_one: served_vs_ceiling.ThroughputResult
    c: idle_vs_bare.IdleResult
    c_one: idle_vs_bare.IdleResult
    beside: beside.BesideResult
    budgets: budgets.BudgetResult
    b: mixed_latency.MixedResult
    d: overload.OverloadResult
    startup: startup.StartupResult
    samplers: mixed_samplers.MixedSamplers
    adaptive: adaptive.AdaptiveResult


RERUN = """## How to rerun

```
.venv/bin/python -m bench.performance --out docs/performance.md    # everything, ~30 min on 2 cores
.venv/bin/python -m bench.served_vs_ceiling --window 150            # (a) alone, prints its section
.venv/bin/python -m loadtest.mixed_latency --duration 120 --cap 200 # (b) alone
.venv/bin/python -m bench.idle_vs_bare --repeats 20                 # (c) alone
.venv/bin/python -m bench.beside --repeats 5                        # K=10 beside eight K=250
.venv/bin/python -m loadtest.budgets --requests 40                  # latency budgets kept
.venv/bin/python -m loadtest.startup                                # start-up to /readyz
.venv/bin/python -m loadtest.overload --duration 60                # (d) alone
.venv/bin/python -m loadtest.mixed_samplers --window 60           # mixed samplers vs one sampler
.venv/bin/python -m loadtest.adaptive --out docs/adaptive.md      # plain shedding vs adaptive budgets
.venv/bin/python -m bench.gpu_check --out gpu.json                 # on a CUDA machine (see GPU)
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
    parser.add_argument("--one-thread-window", type=float, default=60.0, help="(a) at one thread, seconds")
    parser.add_argument("--mixed-duration", type=float, default=120.0, help="(b) seconds of arrivals")
    parser.add_argument("--mixed-cap", type=float, default=200.0, help="(b) wall cap per mode, seconds")
    parser.add_argument("--repeats", type=int, default=20, help="(c) runs of each path")
    parser.add_argument("--budget-requests", type=int, default=40, help="budget requests per phase")
    parser.add_argument("--overload-duration", type=float, default=overload.DURATION_S)
    args = parser.parse_args()

    started = time.perf_counter()
    machine = describe()
    model_dir, model = bundled_model()
    networks = Networks(model_dir)
    params = sum(p.numel() for p in model.net.parameters())
    timings: dict[str, float] = {}
    _phase("packages", timings, lambda: _build_packages(networks))
    a = _phase(
        "(a) throughput",
        timings,
        lambda: served_vs_ceiling.run(model_dir, model, networks, window_s=args.window),
    )
    a_one = _phase(
        "(a) one thread, eager",
        timings,
        lambda: served_vs_ceiling.run(
            model_dir,
            model,
            networks,
            window_s=args.one_thread_window,
            torch_threads=1,
            compile=False,
            searched=a.searched,
        ),
    )
    c = _phase(
        "(c) idle", timings, lambda: idle_vs_bare.run(model_dir, model, networks, repeats=args.repeats)
    )
    c_one = _phase(
        "(c) one thread, eager",
        timings,
        lambda: idle_vs_bare.run(
            model_dir, model, networks, repeats=args.repeats // 2, torch_threads=1, compile=False
        ),
    )
    near = _phase("K=10 beside K=250", timings, lambda: beside.run(model_dir, networks))
    kept = _phase(
        "latency budgets",
        timings,
        lambda: budgets.run(model_dir, requests=args.budget_requests, saturation_evals_per_s=a.served),
    )
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
    up = _phase("start-up", timings, lambda: startup.run(model_dir))
    mixed = _phase("mixed samplers", timings, lambda: mixed_samplers.run(model_dir))
    adapt = _phase(
        "adaptive budgets",
        timings,
        lambda: adaptive.run(model_dir, a.requests_per_s, "completed in (a)", args.overload_duration),
    )
    results = Results(a, a_one, c, c_one, near, kept, b, d, up, mixed, adapt)
    total = time.perf_counter() - started
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    builds = {f"{p.value} batch {batch}": seconds for (p, batch), seconds in networks.build_seconds.items()}
    document = "\n\n".join(
        [
            "# Performance",
            f"Written by `python -m bench.performance` on {when} (total benchmark run time "
            f"{total / 60:.1f} min). Generated: rerun rather than edit.",
            _summary(results),
            _setup(machine, params, timings, builds),
            a.markdown(),
            a_one.markdown(),
            c.markdown(),
            c_one.markdown(),
            near.markdown(),
            kept.markdown(),
            b.markdown(),
            d.markdown(),
            up.markdown(),
            mixed.markdown(),
            adapt.markdown(),
            gpu_section.MARKDOWN,
            RERUN,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document + "\n")
    print(f"[bench] wrote {args.out} ({total / 60:.1f} min)", file=sys.stderr)


def _build_packages(networks: Networks) -> None:
    """Every size a default server compiles, so that the servers below serve compiled from the start."""
    for size in dense_bucket_sizes(16):
        networks.get(Variant(machine_threads(), True, _default_precision()), size)


def _default_precision() -> Precision:
    return resolved_precision(Precision.AUTO, torch.device("cpu"))


if __name__ == "__main__":
    main()
