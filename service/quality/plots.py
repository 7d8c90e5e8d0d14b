"""Figure of the trade-off: FID vs K per sampler (log K axis) and latency vs K."""

from __future__ import annotations

from pathlib import Path

from service.quality.tradeoff import Tradeoff


def plot_tradeoff(tradeoff: Tradeoff, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sampler in sorted({p.sampler for p in tradeoff.points}):
        points = tradeoff.for_sampler(sampler)
        ks = [p.steps for p in points]
        counts = "/".join(str(n) for n in sorted({p.num_samples for p in points}, reverse=True))
        # FID depends on the sample count: the legend says which counts a line mixes.
        ax_fid.plot(ks, [p.fid for p in points], marker="o", label=f"{sampler} (n={counts})")
        ax_time.plot(ks, [p.seconds_per_image * 1000 for p in points], marker="o", label=sampler)
    floor = tradeoff.real_vs_real_fid.get("fid")
    if floor is not None:
        n = tradeoff.real_vs_real_fid.get("num_samples")
        ax_fid.axhline(float(floor), color="grey", linestyle="--", label=f"real vs real (n={n})")
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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
