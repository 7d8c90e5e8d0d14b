"""Figures: the trade-off (FID vs K per sampler, log K axis, and latency vs K) and the variance fit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.quality.tradeoff import Tradeoff
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


def plot_tradeoff(tradeoff: Tradeoff, out: Path) -> Path:
    fig, (ax_fid, ax_time) = subplots(1, 2, figsize=(11, 4.2))
    for sampler in sorted({p.sampler for p in tradeoff.points}):
        points = tradeoff.for_sampler(sampler)
        ks = [p.steps for p in points]
        counts = "/".join(str(n) for n in sorted({p.num_samples for p in points}, reverse=True))
        # FID depends on the sample count: the legend says which counts a line mixes.
        ax_fid.plot(ks, [p.fid for p in points], marker="o", label=f"{sampler} (n={counts})")
        ax_time.plot(ks, [p.seconds_per_image * 1000 for p in points], marker="o", label=sampler)
    styles = ("--", "-.", ":", (0, (1, 4)))
    for (n, fid), style in zip(tradeoff.noise_floors.items(), styles, strict=False):
        ax_fid.axhline(fid, color="grey", linestyle=style, label=f"real vs real (n={n})")
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


def plot_variance_fit(fits: Sequence[StepFit], title: str, out: Path) -> Path:
    """The head's interpolation weight and the KL-optimal one against the training step t."""
    fig, ax = subplots(figsize=(6.5, 4.0))
    t = [f.timestep for f in fits]
    ax.plot(t, [f.head_frac for f in fits], marker="o", label="variance head: (v + 1) / 2")
    ax.plot(t, [f.optimal_frac for f in fits], marker="s", label="KL-optimal for this model's mean")
    ax.axhline(0.0, color="grey", linestyle=":", label="fixed small (β̃)")
    ax.axhline(1.0, color="grey", linestyle="--", label="fixed large (β)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training step t of the sampling step")
    ax.set_ylabel("weight of log β in log Σ")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)
