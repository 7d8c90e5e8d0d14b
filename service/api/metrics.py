"""Prometheus metrics: one registry per app (tests build many apps), the engine observer, exposition.

Names follow Prometheus conventions (ddpm_ prefix, base units, _total, _seconds). Every label is bounded:
model names and devices are configured, statuses are error codes, and K is reported as its exact value
only when it is in the configured set (settings.metric_steps plus every calibrated K), else as a bucket.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.api.latency import LatencyTracker
from service.backends.base import Backend, FleetStats, ModelInfo, NullObserver, RowStatus
from service.backends.base import RowRequest as Request

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OCCUPANCY_BUCKETS = (0.125, 0.25, 0.5, 0.75, 0.9, 1.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# The autoscaling signal (deploy/kubernetes): backlog seconds = backlog steps / row-steps per second.
BACKLOG_HELP = "Row-steps still to run: queued images' steps plus running images' remaining steps"
RATE_HELP = "Row-steps per second while the engine iterates (moving average; kept when idle)"


class StepLabels:
    """K -> its metric label: "50" when 50 is configured, else "le_<next configured>" or "gt_<largest>"."""

    def __init__(self, bounds: Sequence[int]) -> None:
        self.bounds = sorted(set(bounds))
        self.exact = set(self.bounds)

    def add_exact(self, steps: Iterable[int]) -> None:
        """Also report these K exactly (the calibrated ones, so live latency lines up with quality)."""
        self.exact.update(steps)

    def __call__(self, steps: int | str | None) -> str:
        if steps is None:
            return "none"
        if not isinstance(steps, int):
            return "other"  # a respacing string ("ddim50"): the API never sends one
        if steps in self.exact:
            return str(steps)
        i = bisect.bisect_left(self.bounds, steps)
        return f"le_{self.bounds[i]}" if i < len(self.bounds) else f"gt_{self.bounds[-1]}"


class Metrics:
    def __init__(self, metric_steps: Sequence[int]) -> None:
        self.registry = CollectorRegistry()
        self.k_label = StepLabels(metric_steps)
        self.trackers: dict[str, LatencyTracker] = {}
        r = self.registry
        self.requests = Counter(
            "ddpm_requests_total",
            "Generate requests by outcome",
            ["model", "k", "sampler", "status"],
            registry=r,
        )
        # `sampler` is the variant run (service.quality.sampler_kinds: ddpm, fixed-small, analytic,
        # ddim, dpm++2m, ...): a fixed set, bounded like the K labels.
        self.request_seconds = Histogram(
            "ddpm_request_duration_seconds",
            "End-to-end latency of successful generate requests",
            ["model", "k", "sampler"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "ddpm_queue_wait_seconds",
            "Wait of an image for a batch slot",
            ["model", "k"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "ddpm_step_duration_seconds",
            "One batched iteration (network + sampler step)",
            ["model", "engine"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.occupancy = Histogram(
            "ddpm_batch_occupancy_ratio",
            "Active rows / padded bucket size per iteration",
            ["model", "engine"],
            buckets=OCCUPANCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "ddpm_batch_rows",
            "Active rows per iteration",
            ["model", "engine"],
            buckets=ROWS_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "ddpm_images_total", "Images (rows) ended, by status", ["model", "k", "status"], registry=r
        )
        self.evaluations = Counter(
            "ddpm_unet_evaluations_total",
            "UNet evaluations of real rows (one per image per step)",
            ["model", "engine"],
            registry=r,
        )
        self.batches = Counter(
            "ddpm_unet_batches_total", "Batched UNet calls", ["model", "engine"], registry=r
        )
        self.rejected = Counter(
            "ddpm_rejected_total",
            "Submissions refused by an engine",
            ["model", "engine", "reason"],
            registry=r,
        )
        self.restarts = Counter(
            "ddpm_executor_restarts_total",
            "Executor rebuilds after a device error",
            ["model", "engine"],
            registry=r,
        )
        self.warmup = Gauge(
            "ddpm_warmup_seconds", "Duration of the last warm-up", ["model", "engine"], registry=r
        )
        self.compiled_sizes = Gauge(
            "ddpm_compiled_batch_sizes",
            "Batch sizes compiled in the background so far (CPU; each serves compiled once built)",
            ["model", "engine"],
            registry=r,
        )
        self.compile_seconds = Counter(
            "ddpm_compile_seconds_total",
            "Seconds spent compiling batch sizes in the background (CPU)",
            ["model", "engine"],
            registry=r,
        )
        self.auth_refused = Counter(
            "ddpm_auth_refused_total",
            "Requests refused before routing: unauthorized, or a key's concurrency / rate limit",
            ["code", "key"],  # key: the key's id (service.api.auth.key_id), bounded by the configured keys
            registry=r,
        )
        # Load-adaptive budgets (service.engine.degrade): what degrading cost, by why it happened.
        self.degraded = Counter(
            "ddpm_degraded_requests_total",
            "Requests that ran fewer steps than asked, by reason (deadline, queue, replanned)",
            ["model", "reason"],
            registry=r,
        )
        self.degraded_steps = Counter(
            "ddpm_degraded_steps_total",
            "Steps of degraded images: as asked (which=asked) and as run (which=used)",
            ["model", "which"],
            registry=r,
        )
        # A summary (sum and count): the delta may be negative, and prometheus-client leaves the _sum of a
        # histogram with negative buckets out, which the mean needs.
        self.degraded_fid = Summary(
            "ddpm_degraded_fid_delta",
            "Calibrated FID as run minus as asked, per degraded request (negative: the frontier's "
            "variant at fewer steps scores better than the asked one)",
            ["model"],
            registry=r,
        )
        self._quality = {
            attr: Gauge(name, doc, ["model", "sampler", "k"], registry=r)
            for attr, name, doc in (
                ("fid", "ddpm_calibrated_fid", "Calibrated FID at K (lower is better)"),
                ("precision", "ddpm_calibrated_precision_ratio", "Calibrated precision at K"),
                ("recall", "ddpm_calibrated_recall_ratio", "Calibrated recall at K"),
                ("class_accuracy", "ddpm_calibrated_class_accuracy_ratio", "Calibrated class accuracy at K"),
                ("bpd", "ddpm_calibrated_bits_per_dim", "Calibrated negative log-likelihood at K"),
                ("seconds_per_image", "ddpm_calibrated_image_seconds", "Calibration throughput at K"),
            )
        }

    def tracker(self, model: str) -> LatencyTracker:
        return self.trackers.setdefault(model, LatencyTracker())

    def observer_for(self, model: str) -> MetricsObserver:
        return MetricsObserver(self, model)

    def set_models(self, models: Iterable[ModelInfo]) -> None:
        """Publish calibrated quality per (sampler, K); must run before the first request."""
        for info in models:
            if info.tradeoff is None:
                continue
            self.k_label.add_exact(p.steps for p in info.tradeoff.points)
            for point in info.tradeoff.points:
                labels = (info.name, point.sampler, self.k_label(point.steps))
                for attr, gauge in self._quality.items():
                    value = getattr(point, attr)
                    if value is not None:
                        gauge.labels(*labels).set(value)

    def watch(self, backend: Backend) -> None:
        """Queue depth, in-flight rows and memory are read from the backend at scrape time."""
        self.registry.register(BackendCollector(backend))

    def count_request(
        self, model: str, k: str, sampler: str, status: str, seconds: float | None = None
    ) -> None:
        self.requests.labels(model, k, sampler, status).inc()
        if seconds is not None:
            self.request_seconds.labels(model, k, sampler).observe(seconds)

    def count_auth_refusal(self, code: str, key: str | None) -> None:
        """A request refused by the auth middleware; `key` is a key id (never a key), None without one."""
        self.auth_refused.labels(code, key or "none").inc()

    def count_degradation(
        self, model: str, reason: str, steps_asked: int, steps_used: Sequence[int], fid_delta: float | None
    ) -> None:
        self.degraded.labels(model, reason).inc()
        self.degraded_steps.labels(model, "asked").inc(steps_asked * len(steps_used))
        self.degraded_steps.labels(model, "used").inc(sum(steps_used))
        if fid_delta is not None:
            self.degraded_fid.labels(model).observe(fid_delta)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsObserver(NullObserver):
    """The engine's observer for one model (runs on the engine thread; prometheus-client is thread-safe)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.m = metrics
        self.model = model
        self.tracker = metrics.tracker(model)
        self._compiled: dict[str, set[int]] = {}

    def on_ready(self, engine: str, warmup_seconds: float) -> None:
        self.m.warmup.labels(self.model, engine).set(warmup_seconds)

    def on_compiled(self, engine: str, batch_size: int, seconds: float) -> None:
        # A set, not a count: a restarted executor reports its sizes again.
        sizes = self._compiled.setdefault(engine, set())
        sizes.add(batch_size)
        self.m.compiled_sizes.labels(self.model, engine).set(len(sizes))
        self.m.compile_seconds.labels(self.model, engine).inc(seconds)

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        labels = (self.model, engine)
        self.m.step_seconds.labels(*labels).observe(seconds)
        self.m.occupancy.labels(*labels).observe(active_rows / bucket)
        self.m.batch_rows.labels(*labels).observe(active_rows)
        self.m.evaluations.labels(*labels).inc(active_rows)
        self.m.batches.labels(*labels).inc()
        self.tracker.record_step(bucket, seconds)

    def on_row_admitted(self, engine: str, request: Request, queue_seconds: float) -> None:
        self.m.queue_seconds.labels(self.model, self.m.k_label(request.steps)).observe(queue_seconds)
        self.tracker.record_queue_wait(queue_seconds)

    def on_row_finished(
        self, engine: str, request: Request, status: RowStatus, queue_seconds: float, total_seconds: float
    ) -> None:
        k = self.m.k_label(request.steps)
        self.m.images.labels(self.model, k, status.value).inc()
        if status is RowStatus.FINISHED:
            self.tracker.record_latency(k, total_seconds)

    def on_rejected(self, engine: str, reason: str) -> None:
        self.m.rejected.labels(self.model, engine, reason).inc()

    def on_executor_restart(self, engine: str, error: str) -> None:
        self.m.restarts.labels(self.model, engine).inc()


class BackendCollector(Collector):
    """A custom collector rather than gauges set by the engine: the engine reports only while it
    iterates, so a gauge would keep its last busy value forever once the engine goes idle."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("ddpm_queue_depth", "Images waiting for a slot", labels=["model", "engine"])
        in_flight = GaugeMetricFamily("ddpm_in_flight_rows", "Images in a slot", labels=["model", "engine"])
        backlog = GaugeMetricFamily("ddpm_backlog_steps", BACKLOG_HELP, labels=["model", "engine"])
        rate = GaugeMetricFamily("ddpm_row_steps_per_second", RATE_HELP, labels=["model", "engine"])
        for load in self.backend.loads():
            depth.add_metric([load.model, load.engine], load.queue_depth)
            in_flight.add_metric([load.model, load.engine], load.in_flight)
            backlog.add_metric([load.model, load.engine], load.backlog_steps)
            rate.add_metric([load.model, load.engine], load.row_steps_per_second)
        memory = GaugeMetricFamily(
            "ddpm_device_memory_bytes", "Memory in use (CUDA allocator, or process RSS)", labels=["device"]
        )
        for device, used in self.backend.memory_bytes().items():
            memory.add_metric([device], used)
        ready = GaugeMetricFamily("ddpm_ready", "1 when every worker is warmed up and accepting work")
        ready.add_metric([], 1.0 if self.backend.ready else 0.0)
        yield from (depth, in_flight, backlog, rate, memory, ready)
        fleet = self.backend.fleet()
        if fleet is not None:
            yield from _fleet_families(fleet)


def _fleet_families(fleet: FleetStats) -> Iterator[Metric]:
    """The Triton backend's workers: membership from discovery, ejections, re-sends."""
    workers = GaugeMetricFamily("ddpm_triton_workers", "Triton workers known, by state", labels=["state"])
    for state, count in fleet.workers.items():
        workers.add_metric([state], count)
    yield workers
    counted = (
        ("ddpm_triton_ejections", "Workers taken out of rotation, by cause", "reason", fleet.ejections),
        ("ddpm_triton_resolves", "Lookups of DDPM_TRITON_DNS, by outcome", "outcome", fleet.resolves),
        ("ddpm_triton_membership_changes", "Workers that joined or left discovery", "change", fleet.changes),
    )
    for name, description, label, counts in counted:
        family = CounterMetricFamily(name, description, labels=[label])
        for value, count in counts.items():
            family.add_metric([value], count)
        yield family
    resends = CounterMetricFamily("ddpm_triton_resends", "Requests sent again after a worker failed them")
    resends.add_metric([], fleet.resends)
    yield resends
