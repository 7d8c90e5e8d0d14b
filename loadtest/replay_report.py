"""The report of a replay run: per-K counts and latency percentiles, throughput, and the files it writes.

report.md (the tables), report.json (the same, for scripts) and latency_vs_k.png (p50/p95/p99 against K),
drawn with matplotlib on its file-only Agg backend, so a load test needs neither torch nor the service.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest import driver, report
from loadtest.driver import Outcome, Percentile

QUANTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class KRow:
    """What happened to the requests of one K."""

    steps: int
    sent: int
    ok: int
    rejected: int  # 429: queue full or a deadline that cannot be met
    timed_out: int  # 504
    other_http: int
    client_errors: int
    censored: int
    percentiles: dict[int, Percentile | None]  # a lower bound where censored requests could raise it


@dataclass(frozen=True)
class ReplayReport:
    base_url: str
    mode: str  # "open loop, ..." or "closed loop, ..."
    started_utc: str
    span_s: float  # run origin -> last record
    rows: list[KRow]
    tally: dict[str, int]

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.rows)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.span_s

    @property
    def evals_per_s(self) -> float:
        """images x steps answered 200 per second (each request asks for one image)."""
        return sum(r.ok * r.steps for r in self.rows) / self.span_s

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "ok": self.ok,
            "requests_per_s": self.requests_per_s,
            "images_steps_per_s": self.evals_per_s,
        }

    def markdown(self, plot_name: str | None = None) -> str:
        headers = ["K", "sent", "200", "429", "504", "other", "client errors", "censored"]
        headers += [f"p{q}" for q in QUANTILES]
        rows = []
        for r in self.rows:
            pcts = [report.pct(r.percentiles[q]) for q in QUANTILES]
            counts = [r.sent, r.ok, r.rejected, r.timed_out, r.other_http, r.client_errors, r.censored]
            rows.append([r.steps, *counts, *pcts])
        parts = [
            f"# Replay against {self.base_url}",
            f"{self.mode}; started {self.started_utc}; {self.span_s:.1f} s from the first scheduled arrival "
            "to the last answer. Latency runs from each request's scheduled arrival to its full response; "
            "'≥' marks a percentile that requests cancelled at the wall cap (censored) could raise.",
            report.table(headers, rows),
            f"Throughput: {self.ok} images answered 200 in {self.span_s:.1f} s = {self.requests_per_s:.2f} "
            f"requests/s, {self.evals_per_s:.1f} images·steps/s. Outcomes: "
            + ", ".join(f"{kind}: {n}" for kind, n in self.tally.items())
            + ".",
        ]
        if plot_name:
            parts.append(f"![latency vs K]({plot_name})")
        return "\n\n".join(parts) + "\n"


def summarize(base_url: str, mode: str, started_utc: str, outcomes: Sequence[Outcome]) -> ReplayReport:
    rows = []
    for k in sorted({o.steps for o in outcomes}):
        mine = [o for o in outcomes if o.steps == k]
        t = driver.tally(mine)
        rows.append(
            KRow(
                steps=k,
                sent=t.sent,
                ok=t.count("200"),
                rejected=t.count("429"),
                timed_out=t.count("504"),
                other_http=t.non_terminal_http,
                client_errors=t.client_errors,
                censored=t.censored,
                percentiles={q: driver.percentile(mine, q) for q in QUANTILES},
            )
        )
    span = max((o.finished_s for o in outcomes), default=0.0)
    return ReplayReport(base_url, mode, started_utc, max(span, 1e-9), rows, driver.tally(outcomes).kinds)


def _subplots(**kwargs: Any) -> tuple[Any, Any]:
    """plt.subplots on the Agg backend (no display needed); matplotlib loads only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)  # type: ignore[no-any-return]


def _save(fig: Any, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_latency(result: ReplayReport, out: Path) -> Path:
    fig, ax = _subplots(figsize=(6.5, 4.2))
    for q, marker in zip((50, 95, 99), ("o", "s", "^"), strict=True):
        points = [(r.steps, p.seconds) for r in result.rows if (p := r.percentiles[q]) is not None]
        if points:
            ks, values = zip(*points, strict=True)
            ax.plot(ks, values, marker=marker, label=f"p{q}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps K")
    ax.set_ylabel("latency, s (scheduled arrival → response)")
    ax.set_title(f"{result.base_url} — {result.requests_per_s:.2f} req/s served", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def write_report(result: ReplayReport, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_latency(result, out_dir / "latency_vs_k.png")
    (out_dir / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    path = out_dir / "report.md"
    path.write_text(result.markdown(plot.name))
    return path
