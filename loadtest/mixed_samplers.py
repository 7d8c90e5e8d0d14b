"""Throughput of a mixed-sampler workload against a single-sampler one, at saturation, over HTTP.

    python -m loadtest.mixed_samplers --window 60      # prints the section of docs/performance.md

Rows of every sampler share the engine's batches: one network call per iteration whatever the samplers,
then each sampler's step on its own rows (service.diffusion.samplers.mixed). What mixing costs is that
per-sampler step math (a gather and scatter per sampler group, and DPM-Solver++'s per-row state). This
measures it end to end: closed-loop clients saturate a fresh default server on the bundled model
(loadtest.throughput, K uniform over its MIX), once with every request on the default sampler (ddpm,
learned variance), once with request i on variant i mod 5 of MIX_VARIANTS, once more single, on fresh
servers in that order so drift shows; the bar compares mixed with the mean of the two single runs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loadtest import report, throughput

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-small"
BAR = 0.95
# Every sampler and variance type the bundled model serves (analytic needs its gamma.json).
MIX_VARIANTS: tuple[Mapping[str, object], ...] = (
    {"sampler": "ddpm"},
    {"sampler": "ddpm", "variance": "analytic"},
    {"sampler": "ddpm", "variance": "fixed_small"},
    {"sampler": "ddim"},
    {"sampler": "dpm++2m"},
)


def mixed_fields(index: int) -> Mapping[str, object]:
    return MIX_VARIANTS[index % len(MIX_VARIANTS)]


@dataclass(frozen=True)
class MixedSamplers:
    single_before: throughput.Served
    mixed: throughput.Served
    single_after: throughput.Served

    @property
    def single(self) -> float:
        return statistics.fmean([self.single_before.served, self.single_after.served])

    @property
    def ratio(self) -> float:
        return self.mixed.served / self.single

    @property
    def met(self) -> bool:
        return self.ratio >= BAR

    def markdown(self) -> str:
        def row(name: str, s: throughput.Served) -> tuple[str, ...]:
            mean_step = s.step_seconds_sum / s.server_batches * 1000
            rows_per_call = s.server_evals / s.server_batches
            return (name, f"{s.served:.1f}", f"{s.completed}", f"{rows_per_call:.2f}", f"{mean_step:.1f} ms")

        variants = ", ".join(
            "/".join(str(v) for v in fields.values()) for fields in MIX_VARIANTS
        )  # fmt: skip
        return "\n\n".join(
            [
                "## Mixed samplers vs one sampler",
                f"Bundled model, a fresh default server per run, {self.mixed.concurrency} closed-loop "
                f"clients, K uniform over {sorted(throughput.MIX)}, PNG responses, "
                f"{self.mixed.warmup_s:.0f} s warm-up and a {self.mixed.window_s:.0f} s window each. "
                f"Mixed: request i runs variant i mod {len(MIX_VARIANTS)} of {variants}. "
                "Single: every request on ddpm (learned variance).",
                report.table(
                    ["Run", "images·steps/s", "images", "rows per UNet call", "mean iteration"],
                    [
                        row("single sampler (before)", self.single_before),
                        row("mixed samplers", self.mixed),
                        row("single sampler (after)", self.single_after),
                    ],
                ),
                report.bar(
                    f"mixed ≥ {BAR} × single",
                    self.met,
                    f"{self.mixed.served:.1f} ÷ {self.single:.1f} = **{self.ratio:.3f}**",
                ),
            ]
        )


def run(model_dir: Path = BUNDLED_MODEL, *, warmup_s: float = 15.0, window_s: float = 60.0) -> MixedSamplers:
    def served(fields: throughput.driver.BodyFields | None) -> throughput.Served:
        return throughput.run(model_dir, warmup_s=warmup_s, window_s=window_s, fields=fields)

    return MixedSamplers(served(None), served(mixed_fields), served(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    args = parser.parse_args()
    print(run(warmup_s=args.warmup, window_s=args.window).markdown())


if __name__ == "__main__":
    main()
