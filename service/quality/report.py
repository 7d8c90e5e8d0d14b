"""tradeoff.json as a markdown table (for docs/quality.md and model cards)."""

from __future__ import annotations

from service.quality.tradeoff import Tradeoff, TradeoffPoint


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def point_row(p: TradeoffPoint) -> str:
    return (
        f"| {p.sampler} | {p.steps} | {p.num_samples} | {_fmt(p.fid, 2)} | {_fmt(p.precision)} | "
        f"{_fmt(p.recall)} | {_fmt(p.class_accuracy)} | {_fmt(p.bpd)} | {p.seconds_per_image * 1000:.1f} |"
    )


def tradeoff_markdown(tradeoff: Tradeoff) -> str:
    floor = tradeoff.real_vs_real_fid
    lines = [
        f"Model `{tradeoff.model}`; features: {tradeoff.feature_extractor}; "
        f"reference: {tradeoff.reference_set}; machine: {tradeoff.machine}.",
        "",
        f"Real-vs-real FID (train vs test, {floor.get('num_samples')} images): {_fmt(floor.get('fid'), 2)}"
        + "".join(
            f"; {n} images: {fid:.2f}"
            for n, fid in tradeoff.noise_floors.items()
            if n != str(floor.get("num_samples"))
        )
        + ".",
        "",
        "| sampler | K | samples | FID | precision | recall | class accuracy | bits/dim | ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        point_row(p) for p in sorted(tradeoff.points, key=lambda p: (p.sampler != "ddpm", p.sampler, p.steps))
    ]
    return "\n".join(lines) + "\n"
