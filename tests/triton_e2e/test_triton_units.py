"""The Triton pieces that need no server: wire format, config.pbtxt, routing, settings, worker metrics."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.api import metrics as gateway_metrics
from service.api.settings import Settings
from service.backends.base import UnknownModel
from service.backends.triton.protocol import INPUTS, OUTPUTS, WireRequest, decode_error, error_tensors
from service.backends.triton.routing import Router
from service.engine.degrade import StepOption
from service.engine.errors import DeadlineExceeded, EngineError, InvalidRequest, QueueFull
from service.triton_worker import metrics as worker_metrics
from service.triton_worker.repo import config_pbtxt, write_triton_model

ROOT = Path(__file__).resolve().parents[2]


def test_wire_request_round_trips() -> None:
    wire = WireRequest("abc", class_label=3, steps=7, sampler="ddim", eta=0.5, seed=2**62, num_images=2,
                       timeout_seconds=1.5, progress=True)  # fmt: skip
    tensors = wire.tensors()
    assert {name: str(t.dtype) for name, t in tensors.items()}["SEED"] == "int64"
    back = WireRequest.from_tensors(tensors)
    assert back == WireRequest("abc", 3, 7, "ddim", 0.5, 2**62, 2, 1.5, True, False)
    cancel = WireRequest.from_tensors(WireRequest("abc", cancel=True).tensors())
    assert cancel.cancel and cancel.request_id == "abc"
    assert WireRequest.from_tensors(WireRequest("u", class_label=None).tensors()).class_label is None
    assert WireRequest.from_tensors(WireRequest("p", preview_every=3).tensors()).preview_every == 3
    assert WireRequest.from_tensors(WireRequest("q").tensors()).preview_every is None
    with pytest.raises(InvalidRequest):
        WireRequest("x", seed=2**63).tensors()
    # Defaults travel as absent inputs; edge values that equal no default still travel.
    assert set(WireRequest("d", steps=10).tensors()) == {"REQUEST_ID", "STEPS", "SEED", "NUM_IMAGES"}
    edges = WireRequest("e", class_label=0, eta=0.0, variance="fixed_small", preview_every=1,
                        fallbacks=(StepOption(5, "ddpm"),))  # fmt: skip
    assert WireRequest.from_tensors(edges.tensors()) == edges


@pytest.mark.parametrize(
    "error",
    [QueueFull("full", retry_after=2.5), DeadlineExceeded("late"), UnknownModel("who?"), EngineError("odd")],
)
def test_errors_keep_their_type_across_the_wire(error: EngineError) -> None:
    back = decode_error(error_tensors(error)["ERROR"])
    assert type(back) is type(error) and str(back) == str(error)
    if isinstance(error, QueueFull):
        assert isinstance(back, QueueFull) and back.retry_after == 2.5
    garbled = decode_error(np.array([b"not json"], dtype=np.object_))
    assert type(garbled) is EngineError


def test_config_pbtxt_declares_the_protocols_tensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = config_pbtxt("m", {"max_batch": "8"})
    assert 'name: "m"' in text and "decoupled: true" in text and 'backend: "python"' in text
    for name in (*INPUTS, *OUTPUTS):
        assert f'name: "{name}"' in text
    assert 'key: "max_batch" value: { string_value: "8" }' in text
    with pytest.raises(FileNotFoundError):
        write_triton_model(tmp_path)  # no model.json: not a model folder
    (tmp_path / "model.json").write_text("{}")
    write_triton_model(tmp_path)
    assert "TritonPythonModel" in (tmp_path / "1" / "model.py").read_text()


def test_worker_engine_settings_come_from_config_parameters() -> None:
    from service.triton_worker.model import engine_settings

    chosen = engine_settings({"max_batch": "8", "run_to_completion": "true", "compile": "false"})
    assert chosen.max_batch == 8 and chosen.run_to_completion and not chosen.compile
    assert not engine_settings({"run_to_completion": "false"}).run_to_completion
    with pytest.raises(ValueError, match="compile must be true or false"):
        engine_settings({"compile": "sometimes"})
    with pytest.raises(ValueError, match="max_batch must be an integer"):
        engine_settings({"max_batch": "many"})


def test_the_deployed_worker_serves_with_the_embedded_servers_defaults() -> None:
    """model_store's config.pbtxt, with no DDPM_* set, gives the engine what a default gateway gives its
    embedded engine (service.api.app): compiled, the default package cache, threads measured."""
    import re

    from service.engine.settings import EngineSettings
    from service.triton_worker.model import engine_settings

    config = (ROOT / "model_store" / "fmnist-small" / "config.pbtxt").read_text()
    params = dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', config))
    default = {name: field.default for name, field in Settings.model_fields.items()}  # no DDPM_* read
    embedded = EngineSettings(
        max_batch=default["max_batch"],
        max_queue=default["max_queue"],
        run_to_completion=default["run_to_completion"],
        precision=default["precision"],
        compile=default["compile"],
        compile_cache_dir=default["compile_cache_dir"],
        warmup_iterations=default["warmup_iterations"],
        threads=default["torch_threads"],
    )
    assert engine_settings(params, {}) == embedded
    assert embedded.compile is True and embedded.threads is None


def test_worker_reads_the_gateways_environment_under_its_parameters() -> None:
    from service.triton_worker.model import engine_settings

    env = {
        "DDPM_COMPILE_CACHE_DIR": "/var/cache/ddpm-compile",
        "DDPM_TORCH_THREADS": "2",
        "DDPM_COMPILE": "0",
    }
    from_env = engine_settings({}, env)
    assert from_env.compile_cache_dir == "/var/cache/ddpm-compile" and from_env.threads == 2
    assert from_env.compile is False
    params = {"compile": "true", "compile_cache_dir": "/models/cache", "torch_threads": "1"}
    chosen = engine_settings(params, env)
    assert chosen.compile is True and chosen.compile_cache_dir == "/models/cache" and chosen.threads == 1


def test_worker_log_records_go_to_tritons_log() -> None:
    import logging

    from service.triton_worker.stub import log_to_triton

    class Logger:
        lines: list[tuple[str, str]] = []

        @classmethod
        def log_info(cls, message: str) -> None:
            cls.lines.append(("info", message))

        @classmethod
        def log_warn(cls, message: str) -> None:
            cls.lines.append(("warn", message))

        @classmethod
        def log_error(cls, message: str) -> None:
            cls.lines.append(("error", message))

    class PbUtils:
        pass

    PbUtils.Logger = Logger  # type: ignore[attr-defined]
    root = logging.getLogger("service")
    handlers, level = list(root.handlers), root.level
    try:
        log_to_triton(PbUtils)
        log_to_triton(PbUtils)  # a second instance in the same stub adds no second handler
        logging.getLogger("service.engine.executor").info("warmed up in %.1f s", 2.0)
        logging.getLogger("service.engine.compile").warning("no compiler")
        logging.getLogger("service.engine.compile").debug("not forwarded")
        assert Logger.lines == [
            ("info", "service.engine.executor: warmed up in 2.0 s"),
            ("warn", "service.engine.compile: no compiler"),
        ]
    finally:
        root.handlers, root.level = handlers, level


def test_launched_workers_get_no_thread_settings() -> None:
    from service.triton_worker.launcher import server_environment

    env = server_environment({"PATH": "/usr/bin", "DDPM_COMPILE_CACHE_DIR": "/c"})
    assert "OMP_NUM_THREADS" not in env and "DDPM_TORCH_THREADS" not in env
    assert env["DDPM_COMPILE_CACHE_DIR"] == "/c" and env["PATH"].endswith(":/usr/bin")


def test_router_picks_the_least_loaded_live_worker() -> None:
    router = Router(["a:1", "b:1", "c:1"])
    a, b, c = router.workers
    assert router.choose("m") is None  # nobody live yet
    for worker in (a, b):
        worker.live, worker.ready_models = True, {"m"}
    c.live, c.ready_models = True, {"other"}
    a.outstanding = 2
    assert router.choose("m") is b
    assert router.choose("m", exclude={b}) is a
    b.outstanding = 2
    picks = {router.choose("m").url for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"a:1", "b:1"}  # equal load: turns
    b.live = False
    assert router.serving("m") == [a]


def test_settings_need_host_port_urls_for_the_triton_backend() -> None:
    settings = Settings(backend="triton", triton_urls="w1:8001, w2:8001")  # type: ignore[arg-type]
    assert settings.triton_urls == ["w1:8001", "w2:8001"]
    with pytest.raises(ValidationError, match="needs worker URLs|needs triton_urls"):
        Settings(backend="triton")
    with pytest.raises(ValidationError, match="host:port"):
        Settings(backend="triton", triton_urls=["grpc://w1:8001"])


def test_settings_take_a_dns_name_to_discover_the_workers() -> None:
    settings = Settings(backend="triton", triton_dns="ddpm-triton.ddpm.svc.cluster.local:8001")
    assert settings.triton_urls == [] and settings.triton_resolve_interval_s == 5.0
    with pytest.raises(ValidationError, match="triton_dns must be host:port"):
        Settings(backend="triton", triton_dns="ddpm-triton.ddpm.svc")
    with pytest.raises(ValidationError, match="triton_nameserver must be host:port"):
        Settings(backend="triton", triton_dns="w:8001", triton_nameserver="127.0.0.1")
    with pytest.raises(ValidationError, match="triton_resolve_interval_s"):
        Settings(backend="triton", triton_dns="w:8001", triton_resolve_interval_s=0)


class _FakeMetric:
    def __init__(self, family: _FakeFamily, labels: dict[str, str], buckets: list[float] | None = None):
        self.family, self.labels, self.buckets = family, labels, buckets
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)

    increment = set = observe


class _FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    made: dict[str, _FakeFamily] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.metrics: list[_FakeMetric] = []
        _FakeFamily.made[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _FakeMetric:  # noqa: N802
        metric = _FakeMetric(self, labels, buckets)
        self.metrics.append(metric)
        return metric


class _FakePbUtils:
    MetricFamily = _FakeFamily


def test_worker_metrics_match_the_gateways_names_types_and_buckets() -> None:
    exposition = gateway_metrics.Metrics((10,))
    exposition.watch(_NoBackend())
    types = {}
    for line in exposition.exposition().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind  # prometheus-client names a counter family with its _total
    observer = worker_metrics.TritonMetricsObserver(_FakePbUtils(), "tiny", "cpu")
    observer.on_step("cpu", active_rows=3, bucket=4, seconds=0.02)
    for name, family in _FakeFamily.made.items():
        assert types.get(name) == family.kind, name
        (metric,) = family.metrics
        assert set(metric.labels) <= {"model", "engine", "device"}
    assert _FakeFamily.made["ddpm_batch_occupancy_ratio"].metrics[0].values == [0.75]
    assert worker_metrics.STEP_BUCKETS == gateway_metrics.STEP_BUCKETS
    assert worker_metrics.OCCUPANCY_BUCKETS == gateway_metrics.OCCUPANCY_BUCKETS
    assert worker_metrics.ROWS_BUCKETS == gateway_metrics.ROWS_BUCKETS
    assert worker_metrics.BACKLOG_HELP == gateway_metrics.BACKLOG_HELP
    assert worker_metrics.RATE_HELP == gateway_metrics.RATE_HELP


class _NoBackend:
    ready = True

    def loads(self) -> list[object]:
        return []

    def fleet(self) -> None:
        return None

    def memory_bytes(self) -> dict[str, int]:
        return {}


def test_worker_publishes_step_metrics_from_the_gauge_thread_not_the_engines() -> None:
    from service.triton_worker.model import _observer, _QueuedSteps

    observer = _observer(_FakePbUtils(), "tiny", "cpu")
    assert isinstance(observer, _QueuedSteps)
    observer.on_step("cpu", active_rows=3, bucket=4, seconds=0.02)  # the engine thread: no IPC
    rows = _FakeFamily.made["ddpm_batch_rows"].metrics[0]
    assert rows.values == []
    observer.publish()  # the gauge thread, once a second
    assert rows.values == [3] and _FakeFamily.made["ddpm_unet_evaluations_total"].metrics[0].values == [3]
    observer.publish()
    assert rows.values == [3]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_stub_pins_glibcs_malloc_thresholds() -> None:
    from service.triton_worker.stub import steady_heap

    assert steady_heap() is True  # process-wide, and harmless here: pytest's heap keeps freed memory longer
