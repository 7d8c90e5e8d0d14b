"""Live latency figures of one model: what K-by-latency selection predicts from, and /tradeoff reports.

Fed from the engine thread (through the metrics observer) and read on the event loop, hence the lock.
Memory is bounded: one moving average per batch bucket, one window of recent latencies per K label
(labels are bounded, see metrics.StepLabels).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

EWMA_WEIGHT = 0.2  # weight of the newest sample: follows a load change within ~10 iterations
LATENCY_WINDOW = 512  # recent images per K label the percentiles are taken over


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float
    p90: float
    p99: float


class LatencyTracker:
    def __init__(self, window: int = LATENCY_WINDOW, weight: float = EWMA_WEIGHT) -> None:
        self.window = window
        self.weight = weight
        self._lock = threading.Lock()
        self._step_seconds: dict[int, float] = {}  # batch bucket -> moving average of an iteration
        self._queue_seconds: float | None = None
        self._latency: dict[str, deque[float]] = {}

    def record_step(self, bucket: int, seconds: float) -> None:
        with self._lock:
            self._step_seconds[bucket] = self._average(self._step_seconds.get(bucket), seconds)

    def record_queue_wait(self, seconds: float) -> None:
        with self._lock:
            self._queue_seconds = self._average(self._queue_seconds, seconds)

    def record_latency(self, k_label: str, seconds: float) -> None:
        with self._lock:
            self._latency.setdefault(k_label, deque(maxlen=self.window)).append(seconds)

    def step_seconds(self, rows: int) -> float | None:
        """Seconds per iteration with `rows` rows in flight: the average of the smallest measured bucket
        that holds them (padding makes a bucket cost the same whatever its fill), else of the largest
        measured one (rows beyond the largest bucket wait their turn; the queue wait covers that).
        None before the first measured iteration."""
        with self._lock:
            if not self._step_seconds:
                return None
            holding = [b for b in self._step_seconds if b >= rows]
            bucket = min(holding) if holding else max(self._step_seconds)
            return self._step_seconds[bucket]

    def queue_wait(self) -> float:
        """Moving average of recent rows' wait for a slot (0 before any was admitted)."""
        with self._lock:
            return self._queue_seconds or 0.0

    def percentiles(self) -> dict[str, Percentiles]:
        with self._lock:
            windows = {label: sorted(values) for label, values in self._latency.items() if values}
        return {label: _percentiles(values) for label, values in windows.items()}

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.weight) * old + self.weight * new


def _percentiles(ordered: list[float]) -> Percentiles:
    def rank(q: float) -> float:  # nearest-rank percentile: always an observed value
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return Percentiles(len(ordered), rank(0.5), rank(0.9), rank(0.99))
