"""tradeoff.json: measured quality and cost per (sampler, K), shipped beside a model's weights.

The server reads it to answer `max_fid` requests and to publish quality gauges; people read it (and
docs/quality.md) to choose K. Every point states its sample count; the file states the machine and the
feature extractor, and a real-vs-real FID at the same sample count as the noise floor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRADEOFF_FILE = "tradeoff.json"


class TradeoffError(ValueError):
    """A tradeoff.json that cannot be read."""


@dataclass
class TradeoffPoint:
    sampler: str
    steps: int
    num_samples: int
    fid: float
    precision: float
    recall: float
    class_accuracy: float | None
    seconds_per_image: float
    bpd: float | None = None
    bpd_images: int | None = None


@dataclass
class Tradeoff:
    model: str
    machine: str
    feature_extractor: str
    reference_set: str
    real_vs_real_fid: dict[str, float | int] = field(default_factory=dict)  # at the latest run's count
    points: list[TradeoffPoint] = field(default_factory=list)
    # Real-vs-real FID at every sample count the points use ("500" -> FID): FID is biased by the count, so
    # each point is read against the floor at its own count.
    noise_floors: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Tables written before noise_floors existed still carry their one floor in real_vs_real_fid.
        if self.real_vs_real_fid.get("fid") is not None and not self.noise_floors:
            self.add_floor(int(self.real_vs_real_fid["num_samples"]), float(self.real_vs_real_fid["fid"]))

    def set_real_vs_real(self, num_samples: int, fid: float) -> None:
        """The latest run's floor, also kept among the floors of every count."""
        self.real_vs_real_fid = {"num_samples": num_samples, "fid": fid}
        self.add_floor(num_samples, fid)

    def add_floor(self, num_samples: int, fid: float) -> None:
        self.noise_floors[str(num_samples)] = fid
        self.noise_floors = dict(sorted(self.noise_floors.items(), key=lambda item: -int(item[0])))

    def merge(self, points: list[TradeoffPoint]) -> None:
        """New points replace old ones of the same (sampler, K)."""
        keys = {(p.sampler, p.steps) for p in points}
        self.points = [p for p in self.points if (p.sampler, p.steps) not in keys] + points
        self.points.sort(key=lambda p: (p.sampler, p.steps))

    def absorb(self, other: Tradeoff) -> None:
        """Take another run's points and floors, e.g. calibrations run in parallel on copies of one model.

        Where both tables have a (sampler, K), the point with more samples stays (the other's on a tie):
        the table keeps one count per point, and the larger count is the better estimate. Tables measured
        in another feature space or against another reference set are refused, since their FIDs do not
        compare.
        """
        for attribute in ("feature_extractor", "reference_set"):
            mine, theirs = getattr(self, attribute), getattr(other, attribute)
            if mine != theirs:
                raise TradeoffError(f"cannot merge tables with different {attribute}: {mine!r} vs {theirs!r}")
        mine_at = {(p.sampler, p.steps): p for p in self.points}
        self.merge(
            [
                p
                for p in other.points
                if (p.sampler, p.steps) not in mine_at
                or p.num_samples >= mine_at[p.sampler, p.steps].num_samples
            ]
        )
        for count, fid in other.noise_floors.items():
            self.add_floor(int(count), fid)
        if int(other.real_vs_real_fid.get("num_samples", 0)) > int(
            self.real_vs_real_fid.get("num_samples", 0)
        ):
            self.real_vs_real_fid = dict(other.real_vs_real_fid)

    def for_sampler(self, sampler: str) -> list[TradeoffPoint]:
        return [p for p in self.points if p.sampler == sampler]

    def frontier(self, max_steps: int | None = None) -> list[TradeoffPoint]:
        """The Pareto frontier of FID against cost, by increasing K: each point is better (lower FID)
        than every point that costs as little or less.

        Cost is K: every sampler spends one network call per step, and its own step math is a small,
        sampler-independent share of an iteration (docs/performance.md), so latency is K x the step
        time whatever the sampler (and K is exact where calibrated seconds_per_image is noisy). Only
        points at the table's largest sample count are compared: FID is biased by the count, and a point
        at 100 samples is no rival of one at 1,000. Ties at one K go to the lower FID. `max_steps`
        leaves out points beyond a model's T.
        """
        count = max((p.num_samples for p in self.points), default=0)
        rivals = [
            p for p in self.points if p.num_samples == count and (max_steps is None or p.steps <= max_steps)
        ]
        best_at: dict[int, TradeoffPoint] = {}
        for point in rivals:
            if point.steps not in best_at or point.fid < best_at[point.steps].fid:
                best_at[point.steps] = point
        frontier: list[TradeoffPoint] = []
        for steps in sorted(best_at):
            if not frontier or best_at[steps].fid < frontier[-1].fid:
                frontier.append(best_at[steps])
        return frontier

    def to_dict(self) -> dict[str, Any]:
        frontier = [{"sampler": p.sampler, "steps": p.steps, "fid": p.fid} for p in self.frontier()]
        return {**asdict(self), "points": [asdict(p) for p in self.points], "frontier": frontier}


def read_tradeoff(model_dir: Path) -> Tradeoff | None:
    """The model's trade-off table, or None when it has not been calibrated."""
    path = Path(model_dir) / TRADEOFF_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        points = [TradeoffPoint(**p) for p in data.pop("points")]
        data.pop("frontier", None)  # written for readers; always recomputed from the points
        return Tradeoff(**data, points=points)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise TradeoffError(f"{path}: not a valid trade-off table ({e})") from None


def write_tradeoff(model_dir: Path, tradeoff: Tradeoff) -> Path:
    path = Path(model_dir) / TRADEOFF_FILE
    path.write_text(json.dumps(tradeoff.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
