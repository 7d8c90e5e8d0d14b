"""Markdown pieces shared by the benchmarks: tables, bar verdicts, number formats."""

from __future__ import annotations

from collections.abc import Sequence

from loadtest.driver import Percentile


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bar(name: str, met: bool, detail: str) -> str:
    return f"**Bar — {name}: {'met' if met else 'NOT met'}** ({detail})"


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def pct(p: Percentile | None) -> str:
    """A latency percentile; '≥' when censored requests make it a lower bound."""
    if p is None:
        return "–"
    return ("≥ " if p.lower_bound else "") + seconds(p.seconds)


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"
