"""Bar: a K=10 request beside eight K=250 requests takes at most 1.15 × 10 raw forward calls at 9 rows.

    python -m bench.beside --repeats 5

The HTTP half is loadtest.beside. The raw forward at 9 rows is the fastest way this machine runs 9 rows
(bench.variants): eager at exactly 9 rows, or the compiled package the server would use for them (9 rows
padded to the next compiled size), whichever is faster, timed in this process right after the HTTP run.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.ceiling import Ceiling, measure_variant
from bench.model import bundled_model
from bench.variants import Networks, Variant, variants
from loadtest import beside, report
from service.engine.buckets import dense_bucket_sizes, pick_bucket
from service.engine.settings import Precision

BAR = 1.15
ROWS = beside.LONG_REQUESTS + 1


@dataclass(frozen=True)
class BesideResult:
    http: beside.BesideRun
    raw: list[tuple[Variant, int, Ceiling]]  # setting, batch it ran, timing; fastest first

    @property
    def raw_call_s(self) -> float:
        return self.raw[0][2].median_call_s

    @property
    def ratio_at_fp32(self) -> float:
        """Against the fastest fp32 setting (the server's default precision on the CPU)."""
        call = next(c for v, _, c in self.raw if v.precision is Precision.FP32).median_call_s
        return self.http.median_s / (beside.SHORT_K * call)

    @property
    def ratio(self) -> float:
        return self.http.median_s / (beside.SHORT_K * self.raw_call_s)

    @property
    def met(self) -> bool:
        return self.ratio <= BAR

    def markdown(self) -> str:
        h = self.http
        sent = beside.LONG_REQUESTS * len(h.latencies_s)
        rows = [(v.label, str(batch), f"{c.median_call_s * 1000:.1f} ms") for v, batch, c in self.raw]
        return "\n\n".join(
            [
                f"## K={beside.SHORT_K} beside {beside.LONG_REQUESTS} × K={beside.LONG_K} ({h.settings})",
                f"{len(h.latencies_s)} times: {beside.LONG_REQUESTS} K={beside.LONG_K} requests sent, "
                f"{beside.SETTLE_S:g} s later one K={beside.SHORT_K} request; its latency as the client "
                f"sees it. Long requests answered 200: {h.long_ok} of {sent}.",
                report.table(
                    ["", "median", "all"],
                    [
                        (
                            f"K={beside.SHORT_K}, client end-to-end",
                            report.seconds(h.median_s),
                            ", ".join(f"{s * 1000:.0f}" for s in h.latencies_s) + " ms",
                        ),
                        (
                            "  inside the server (Server-Timing total)",
                            report.seconds(statistics.median(h.server_s)),
                            "",
                        ),
                    ],
                ),
                f"Raw forward for {ROWS} rows, each setting (median call):",
                report.table(["Setting", "batch run", "median call"], rows),
                report.bar(
                    f"latency ≤ {BAR} × {beside.SHORT_K} × raw forward at {ROWS} rows",
                    self.met,
                    f"{report.seconds(h.median_s)} ÷ ({beside.SHORT_K} × {self.raw_call_s * 1000:.1f} ms) "
                    f"= **{self.ratio:.3f}**",
                ),
            ]
        )


def raw_at_rows(
    networks: Networks, rows: int, max_batch: int, calls: int = 20
) -> list[tuple[Variant, int, Ceiling]]:
    padded = pick_bucket(dense_bucket_sizes(max_batch), rows)
    results = []
    for variant in variants():
        batch = padded if variant.compiled else rows
        results.append((variant, batch, measure_variant(networks, variant, batch, calls)))
    return sorted(results, key=lambda item: item[2].median_call_s)


def run(model_dir: Path, networks: Networks, *, repeats: int = 5, max_batch: int = 16) -> BesideResult:
    http = beside.run(model_dir, repeats=repeats)
    return BesideResult(http, raw_at_rows(networks, ROWS, max_batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model_dir, _ = bundled_model()
    print(run(model_dir, Networks(model_dir), repeats=args.repeats).markdown())


if __name__ == "__main__":
    main()
