"""(a) Ceiling vs served throughput at saturation, mixed K in {10, 25, 50, 100}.

    python -m bench.served_vs_ceiling --window 150      # prints the (a) section of docs/performance.md

The served side is loadtest.throughput (closed-loop clients over HTTP against a fresh ddpm-serve with
default settings, or the ones given; see its docstring). The machine's ceiling is the best raw batched
throughput over the settings a user could pick (bench.variants: threads × compiled × precision), found
by a short search at the largest batch; that best setting is then timed before and after the served run,
in this process, and pooled (drift shows); the engine step (bench.engine_step) is timed before it, to
locate any gap. Two cross-checks for a shared core: the ceiling from the median call, and both sides per
CPU-second.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import engine_step
from bench.ceiling import Ceiling, measure_variant, pooled_median_evals_per_s, search
from bench.model import bundled_model
from bench.variants import Networks, Variant
from loadtest import report, throughput
from loadtest.machine import load_average
from service.engine.settings import Precision
from service.model.store import LoadedModel

BAR = 0.90


@dataclass(frozen=True)
class ThroughputResult:
    http: throughput.Served
    before: Ceiling
    after: Ceiling
    step: engine_step.EngineStep
    load_average: tuple[float, float]
    best: Variant
    searched: list[tuple[Variant, Ceiling]]

    @property
    def max_batch(self) -> int:
        return self.http.max_batch

    @property
    def ceiling(self) -> float:
        """Σ rows ÷ Σ call time of the runs before and after, as the bar defines it."""
        calls = self.before.calls + self.after.calls
        return self.max_batch * calls / (self.before.total_s + self.after.total_s)

    @property
    def ceiling_at_fp32(self) -> tuple[Variant, float]:
        """The best setting at the server's default precision on the CPU (fp32), from the search."""
        variant, c = next((v, c) for v, c in self.searched if v.precision is Precision.FP32)
        return variant, c.evals_per_s_median

    @property
    def ceiling_median(self) -> float:
        return pooled_median_evals_per_s(self.before, self.after)

    @property
    def ceiling_per_cpu_s(self) -> float:
        calls = self.before.calls + self.after.calls
        return self.max_batch * calls / (self.before.cpu_s + self.after.cpu_s)

    @property
    def served(self) -> float:
        return self.http.served

    @property
    def served_per_cpu_s(self) -> float:
        return self.http.served_per_cpu_s

    @property
    def requests_per_s(self) -> float:
        return self.http.requests_per_s

    @property
    def ratio(self) -> float:
        return self.served / self.ceiling

    @property
    def met(self) -> bool:
        return self.ratio >= BAR

    def markdown(self) -> str:
        h, b = self.http, self.max_batch
        mean_step = h.step_seconds_sum / h.server_batches
        raw_call = statistics.median([*self.before.call_s, *self.after.call_s])
        rows = [
            (
                f"Raw UNet, batch {b}, {self.best.label}, before",
                f"{self.before.evals_per_s:.1f}",
                self._call(self.before),
            ),
            (f"Raw UNet, batch {b}, after", f"{self.after.evals_per_s:.1f}", self._call(self.after)),
            ("**Ceiling** (best setting, both runs: Σ rows ÷ Σ call time)", f"**{self.ceiling:.1f}**", ""),
            (
                "**Served**, client side (Σ K of 200s finished in the window ÷ window)",
                f"**{self.served:.1f}**",
                f"{h.completed} images, {h.requests_per_s:.2f} req/s",
            ),
            (
                "Served, server counter (Δ `ddpm_unet_evaluations_total` ÷ window)",
                f"{h.served_by_counter:.1f}",
                f"{h.server_batches:.0f} batched UNet calls",
            ),
        ]
        checks = [
            (
                "Wall time, ceiling from the median call (other processes' bursts removed from the "
                "ceiling only: a strict reading)",
                f"{self.served:.1f} ÷ {self.ceiling_median:.1f}",
                f"{self.served / self.ceiling_median:.3f}",
            ),
            (
                "Per CPU-second (server: Δ evaluations ÷ Δ its utime + stime, HTTP included; raw: rows ÷ "
                "CPU time of the calls): insensitive to other processes",
                f"{self.served_per_cpu_s:.1f} ÷ {self.ceiling_per_cpu_s:.1f}",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s:.3f}",
            ),
        ]
        engine = [
            (
                "Mean batch occupancy (Δ sum ÷ Δ count, `ddpm_batch_occupancy_ratio`)",
                f"{h.occupancy_sum / h.server_batches:.3f}",
            ),
            (
                "Mean rows per UNet call (Δ evaluations ÷ Δ `ddpm_unet_batches_total`)",
                f"{h.server_evals / h.server_batches:.2f}",
            ),
            ("Mean engine iteration (`ddpm_step_duration_seconds`)", f"{mean_step * 1000:.1f} ms"),
            (f"Raw forward at batch {b} (median call)", f"{raw_call * 1000:.1f} ms"),
        ]
        share = h.server_cpu_s / h.window_s
        wall_vs_cpu = self.ceiling_per_cpu_s / self.ceiling
        gap = [
            (
                f"Engine iteration vs raw forward, in-process, alternating ({self.step.samples} each, "
                "CPU-time medians): raw ÷ iteration",
                f"{self.step.raw_cpu_s * 1000:.1f} ÷ {self.step.step_cpu_s * 1000:.1f} ms",
                f"{self.step.cpu_ratio:.3f}",
            ),
            (
                "Whole server process per CPU-second (adds HTTP, asyncio, PNG, metrics, thread hand-offs)",
                f"{self.served_per_cpu_s:.1f} ÷ {self.ceiling_per_cpu_s:.1f}",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s:.3f}",
            ),
            (
                "Share of a core the server got during the window (Δ its CPU time ÷ window)",
                f"{h.server_cpu_s:.1f} s ÷ {h.window_s:.1f} s",
                f"{share:.3f}",
            ),
            (
                "Predicted wall ratio = per-CPU-second ratio × core share × (ceiling per CPU-s ÷ per s)",
                "",
                f"{self.served_per_cpu_s / self.ceiling_per_cpu_s * share * wall_vs_cpu:.3f}",
            ),
            ("Measured wall ratio (the bar)", "", f"{self.ratio:.3f}"),
        ]
        search_rows = [
            (variant.label, f"{c.evals_per_s_median:.1f}", f"{c.median_call_s * 1000:.1f} ms")
            for variant, c in self.searched
        ]
        t = h.tally
        return "\n\n".join(
            [
                f"## (a) Ceiling vs served throughput ({h.settings})",
                f"The machine's ceiling: every setting a user could pick, {self.searched[0][1].calls} "
                f"calls each at batch {b} (fastest first; compiled = the AOTInductor packages the server "
                "builds and serves):",
                report.table(["Setting", "images·steps/s (median call)", "median call"], search_rows),
                f"Server: {h.settings}. {h.concurrency} closed-loop clients "
                f"(2 × slots), K uniform over {sorted(throughput.MIX)}, PNG responses. Warm-up "
                f"{h.warmup_s:.0f} s, then a {h.window_s:.1f} s measurement window. The raw ceiling is "
                f"timed in the benchmark process just before and just after the served run. Load average "
                f"{self.load_average[0]:.2f} → {self.load_average[1]:.2f}.",
                report.table(["", "images·steps/s", "note"], rows),
                report.bar(
                    f"served ≥ {BAR} × ceiling",
                    self.met,
                    f"served ÷ ceiling = {self.served:.1f} ÷ {self.ceiling:.1f} = **{self.ratio:.3f}**; "
                    f"by the server counter {h.served_by_counter / self.ceiling:.3f}",
                ),
                "Cross-checks, because the core is shared with other work:",
                report.table(["Reading", "served ÷ raw", "ratio"], checks),
                report.table(["Engine, over the window", ""], engine),
                "Where served throughput goes (a decomposition; the last two lines should agree):",
                report.table(["Factor", "", "ratio"], gap),
                f"The load generator (the benchmark process) used {h.driver_cpu_s / h.window_s:.2f} "
                "of a core over the window.",
                f"Requests: {t.sent} sent, {t.count('200')} × 200, {t.client_errors} client errors, "
                f"{t.censored} still in flight when the run ended (cancelled; outside the window).",
            ]
        )

    @staticmethod
    def _call(c: Ceiling) -> str:
        return f"{c.calls} calls, {c.median_call_s * 1000:.1f} ms/call median"


def run(
    model_dir: Path,
    model: LoadedModel,
    networks: Networks,
    *,
    max_batch: int = 16,
    warmup_s: float = 20.0,
    window_s: float = 150.0,
    ceiling_calls: int = 60,
    search_calls: int = 15,
    seed: int = 1,
    torch_threads: int | None = None,
    compile: bool | None = None,
    searched: list[tuple[Variant, Ceiling]] | None = None,
    candidates: list[Variant] | None = None,
) -> ThroughputResult:
    """Ceiling search (unless given), engine step, the best setting timed, the served run over HTTP, the
    best setting again: in that order, side by side."""
    load_start = load_average()
    searched = searched or search(networks, max_batch, search_calls, candidates)
    best = searched[0][0]
    before = measure_variant(networks, best, max_batch, ceiling_calls)
    step = engine_step.measure(model, max_batch)
    http = throughput.run(
        model_dir,
        max_batch=max_batch,
        warmup_s=warmup_s,
        window_s=window_s,
        seed=seed,
        torch_threads=torch_threads,
        compile=compile,
    )
    after = measure_variant(networks, best, max_batch, ceiling_calls)
    return ThroughputResult(http, before, after, step, (load_start, load_average()), best, searched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=150.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    model_dir, model = bundled_model()
    networks = Networks(model_dir)
    result = run(
        model_dir, model, networks, max_batch=args.max_batch, warmup_s=args.warmup, window_s=args.window
    )
    print(result.markdown())


if __name__ == "__main__":
    main()
