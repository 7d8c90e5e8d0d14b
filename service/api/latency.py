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
# How far off the step-time model has been: the ratio (whole request, as the server handled it) ÷
# (its prediction), over recent requests. A budget is a promise kept for ~95 % of requests, so the
# prediction is scaled by the 95th percentile of these ratios; before MIN_OUTCOMES requests have
# finished, by DEFAULT_MARGIN.
OUTCOME_WINDOW = 128
MIN_OUTCOMES = 8
MARGIN_QUANTILE = 0.95
DEFAULT_MARGIN = 1.25


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
        self._step_seconds: dict[int, float] = {}  # batch size run -> moving average of an iteration
        self._queue_seconds: float | None = None
        self._latency: dict[str, deque[float]] = {}
        self._ratios: deque[float] = deque(maxlen=OUTCOME_WINDOW)

    def record_step(self, bucket: int, seconds: float) -> None:
        with self._lock:
            self._step_seconds[bucket] = self._average(self._step_seconds.get(bucket), seconds)

    def record_queue_wait(self, seconds: float) -> None:
        with self._lock:
            self._queue_seconds = self._average(self._queue_seconds, seconds)

    def record_latency(self, k_label: str, seconds: float) -> None:
        with self._lock:
            self._latency.setdefault(k_label, deque(maxlen=self.window)).append(seconds)

    def record_outcome(self, predicted_seconds: float, actual_seconds: float) -> None:
        """A request's unscaled prediction next to what it took (received -> response ready)."""
        if predicted_seconds > 0:
            with self._lock:
                self._ratios.append(actual_seconds / predicted_seconds)

    def margin(self) -> float:
        """The factor predictions are scaled by: a high percentile of actual ÷ predicted, at least 1.

        Why learned rather than fixed: what the step-time model leaves out (the first iteration after an
        idle spell, PNG encoding and HTTP, rows that join mid-request, compiled sizes swapping in) differs
        by machine and load; measured here, it stays right when any of those change.
        """
        with self._lock:
            ratios = sorted(self._ratios)
        if len(ratios) < MIN_OUTCOMES:
            return DEFAULT_MARGIN
        return max(1.0, ratios[max(0, math.ceil(MARGIN_QUANTILE * len(ratios)) - 1)])

    def step_seconds(self, rows: int) -> float | None:
        """Seconds per iteration with `rows` rows in flight, None before the first measured iteration.

        Engines report the batch size they ran: a padded bucket (compiled, graphed) or the exact row
        count (eager on the CPU), so the sizes measured so far may not include `rows`. Between two
        measured sizes the time is interpolated linearly; above the largest it is scaled up by rows (an
        iteration costs at most proportionally more, so this errs on the slow side, as a budget should);
        below the smallest, the smallest's time is used (a smaller batch is not slower).
        """
        with self._lock:
            measured = sorted(self._step_seconds.items())
        if not measured:
            return None
        above = [(size, seconds) for size, seconds in measured if size >= rows]
        below = [(size, seconds) for size, seconds in measured if size < rows]
        if not above:
            size, seconds = below[-1]
            return seconds * rows / size
        high_size, high = above[0]
        if high_size == rows or not below:
            return high
        low_size, low = below[-1]
        return low + (high - low) * (rows - low_size) / (high_size - low_size)

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
