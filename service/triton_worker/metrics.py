"""Engine metrics of a Triton worker, published through Triton's custom-metrics API on its metrics port.

In the Triton deployment the engine runs inside tritonserver, so the per-iteration figures (step time,
batch occupancy, UNet evaluations, queue depth, memory) can only be measured there. They are published
under the same names, types, labels and buckets as the gateway's own (service.api.metrics), so one
dashboard query sums them over whichever process ran the engine. The per-request figures (requests,
latency, queue wait per K, images by status) are counted by the gateway in both deployments, and never
here, so that Prometheus does not see them twice.

Buckets are repeated from service.api.metrics rather than imported (a backend must not import the HTTP
layer); tests/triton_e2e/test_triton_units.py checks that both agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from service.engine.observer import NullObserver
from service.engine.scheduler import Load

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OCCUPANCY_BUCKETS = (0.125, 0.25, 0.5, 0.75, 0.9, 1.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GAUGE_REFRESH_SECONDS = 1.0
# The autoscaling signal (deploy/kubernetes): backlog seconds = backlog steps / row-steps per second.
BACKLOG_HELP = "Row-steps still to run: queued images' steps plus running images' remaining steps"
RATE_HELP = "Row-steps per second while the engine iterates (moving average; kept when idle)"

# name -> (kind, description, label names, buckets); kinds are pb_utils.MetricFamily attribute names.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "ddpm_step_duration_seconds": (
        "HISTOGRAM",
        "One batched iteration (network + sampler step)",
        ("model", "engine"),
        STEP_BUCKETS,
    ),
    "ddpm_batch_occupancy_ratio": (
        "HISTOGRAM",
        "Active rows / padded bucket size per iteration",
        ("model", "engine"),
        OCCUPANCY_BUCKETS,
    ),
    "ddpm_batch_rows": ("HISTOGRAM", "Active rows per iteration", ("model", "engine"), ROWS_BUCKETS),
    "ddpm_unet_evaluations_total": (
        "COUNTER",
        "UNet evaluations of real rows (one per image per step)",
        ("model", "engine"),
        None,
    ),
    "ddpm_unet_batches_total": ("COUNTER", "Batched UNet calls", ("model", "engine"), None),
    "ddpm_executor_restarts_total": (
        "COUNTER",
        "Executor rebuilds after a device error",
        ("model", "engine"),
        None,
    ),
    "ddpm_warmup_seconds": ("GAUGE", "Duration of the last warm-up", ("model", "engine"), None),
    "ddpm_queue_depth": ("GAUGE", "Images waiting for a slot", ("model", "engine"), None),
    "ddpm_in_flight_rows": ("GAUGE", "Images in a slot", ("model", "engine"), None),
    "ddpm_backlog_steps": ("GAUGE", BACKLOG_HELP, ("model", "engine"), None),
    "ddpm_row_steps_per_second": ("GAUGE", RATE_HELP, ("model", "engine"), None),
    "ddpm_device_memory_bytes": (
        "GAUGE",
        "Memory in use (CUDA allocator, or process RSS)",
        ("device",),
        None,
    ),
}


class TritonMetricsObserver(NullObserver):
    """EngineObserver over pb_utils metrics; `pb_utils` is the module the Python backend stub provides."""

    def __init__(self, pb_utils: Any, model: str, engine: str) -> None:
        self.model = model
        self.engine = engine
        self._metrics: dict[str, Any] = {}
        # A Metric is unusable once its MetricFamily is garbage-collected: keep the families alive.
        self._families: list[Any] = []
        for name, (kind, description, labels, buckets) in FAMILIES.items():
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self._families.append(family)
            values = {"model": model, "engine": engine, "device": engine}
            label_values = {label: values[label] for label in labels}
            if buckets is None:
                self._metrics[name] = family.Metric(labels=label_values)
            else:
                self._metrics[name] = family.Metric(labels=label_values, buckets=list(buckets))

    def on_ready(self, engine: str, warmup_seconds: float) -> None:
        self._metrics["ddpm_warmup_seconds"].set(warmup_seconds)

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        m = self._metrics
        m["ddpm_step_duration_seconds"].observe(seconds)
        m["ddpm_batch_occupancy_ratio"].observe(active_rows / bucket)
        m["ddpm_batch_rows"].observe(active_rows)
        m["ddpm_unet_evaluations_total"].increment(active_rows)
        m["ddpm_unet_batches_total"].increment(1)

    def on_executor_restart(self, engine: str, error: str) -> None:
        self._metrics["ddpm_executor_restarts_total"].increment(1)

    def set_load(self, load: Load, memory_bytes: int) -> None:
        self._metrics["ddpm_queue_depth"].set(load.queue_depth)
        self._metrics["ddpm_in_flight_rows"].set(load.in_flight)
        self._metrics["ddpm_backlog_steps"].set(load.backlog_steps)
        self._metrics["ddpm_row_steps_per_second"].set(load.row_steps_per_second)
        self._metrics["ddpm_device_memory_bytes"].set(memory_bytes)


class GaugeRefresher:
    """Sets the load gauges every second from a thread: the engine reports its queue only while it
    iterates, so gauges set from its callbacks would keep their last busy value once it goes idle."""

    def __init__(self, refresh: Callable[[], None], interval: float = GAUGE_REFRESH_SECONDS) -> None:
        self._refresh = refresh
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ddpm-triton-gauges", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._refresh()
            except Exception:  # a metrics failure must not end the worker; say so once per interval
                log.exception("refreshing the worker's load gauges failed")
