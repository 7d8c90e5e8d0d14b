"""Figures: the trade-off (FID vs K per sampler, log K axis, and latency vs K) and the variance fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.quality.tradeoff import Tradeoff, TradeoffPoint
from service.quality.variance_fit import StepFit


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """plt.subplots on the file-only Agg backend (servers have no display); matplotlib loads lazily."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)  # type: ignore[no-any-return]


def save(fig: Any, out: Path) -> Path:
    """Lay out, write the PNG (parents created) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def lines(tradeoff: Tradeoff) -> list[tuple[str, int, list[TradeoffPoint]]]:
    """(variant, sample count, points by K): one line per variant and count. FID is biased by the sample
    count, so a line that joined counts would rise or fall where the count changes, not the quality."""
    keys = sorted({(p.sampler, p.num_samples) for p in tradeoff.points}, key=lambda key: (key[0], -key[1]))
    return [
        (sampler, n, sorted((p for p in tradeoff.points if (p.sampler, p.num_samples) == (sampler, n)),
                            key=lambda p: p.steps))
        for sampler, n in keys
    ]  # fmt: skip


def plot_tradeoff(tradeoff: Tradeoff, out: Path) -> Path:
    fig, (ax_fid, ax_time) = subplots(1, 2, figsize=(11, 4.2))
    for sampler, n, points in lines(tradeoff):
        ks = [p.steps for p in points]
        ax_fid.plot(ks, [p.fid for p in points], marker="o", label=f"{sampler} (n={n})")
        ax_time.plot(ks, [p.seconds_per_image * 1000 for p in points], marker="o", label=f"{sampler} (n={n})")
    styles = ("--", "-.", ":", (0, (1, 4)))
    for (count, fid), style in zip(tradeoff.noise_floors.items(), styles, strict=False):
        ax_fid.axhline(fid, color="grey", linestyle=style, label=f"real vs real (n={count})")
    for ax in (ax_fid, ax_time):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps K")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_fid.set_yscale("log")
    ax_fid.set_ylabel("FID (classifier features, lower is better)")
    ax_fid.set_title(f"{tradeoff.model}: quality vs step budget")
    ax_time.set_yscale("log")
    ax_time.set_ylabel("ms per image (batched sampling)")
    ax_time.set_title(tradeoff.machine, fontsize=8)
    return save(fig, out)


def plot_frontier(tradeoff: Tradeoff, out: Path) -> Path:
    """FID against ms per image, one line per variant at the table's largest sample count, and the
    frontier the server chooses from (service.quality.tradeoff.Tradeoff.frontier) drawn over them."""
    fig, ax = subplots(figsize=(7.5, 4.8))
    count = max((p.num_samples for p in tradeoff.points), default=0)
    for sampler, n, points in lines(tradeoff):
        if n != count:
            continue
        ms = [p.seconds_per_image * 1000 for p in points]
        ax.plot(ms, [p.fid for p in points], marker="o", label=sampler)
        for p, x in zip(points, ms, strict=True):
            ax.annotate(f"{p.steps}", (x, p.fid), fontsize=6, textcoords="offset points", xytext=(3, 3))
    frontier = tradeoff.frontier()
    ax.plot(
        [p.seconds_per_image * 1000 for p in frontier],
        [p.fid for p in frontier],
        color="black",
        linewidth=2.5,
        alpha=0.35,
        label="frontier (what budgets choose from)",
    )
    floor = tradeoff.noise_floors.get(str(count))
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label=f"real vs real (n={count})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ms per image (batched calibration sampling; labels: K)")
    ax.set_ylabel("FID (classifier features, lower is better)")
    ax.set_title(f"{tradeoff.model}: FID vs cost per sampler, {count} samples per point", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


def plot_variance_fit(fits: Mapping[str, Sequence[StepFit]], title: str, out: Path) -> Path:
    """Each model's head weight (solid) and its KL-optimal weight (dashed, same colour) against t."""
    fig, ax = subplots(figsize=(6.5, 4.0))
    for index, (label, model_fits) in enumerate(fits.items()):
        t = [f.timestep for f in model_fits]
        colour = f"C{index}"
        head = [f.head_frac for f in model_fits]
        ax.plot(t, head, marker="o", color=colour, label=f"{label}: head (v + 1) / 2")
        ax.plot(
            t,
            [f.optimal_frac for f in model_fits],
            marker="s",
            linestyle="--",
            color=colour,
            label=f"{label}: KL-optimal for its mean",
        )
    ax.axhline(0.0, color="grey", linestyle=":", label="fixed small (β̃)")
    ax.axhline(1.0, color="grey", linestyle="-.", label="fixed large (β)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training step t of the sampling step")
    ax.set_ylabel("weight of log β in log Σ")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, out)
