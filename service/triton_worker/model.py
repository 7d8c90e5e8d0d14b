"""The Triton Python-backend model that serves one model_store folder with our continuous-batching engine.

Each model folder's `1/model.py` is a shim that imports `TritonPythonModel` from here (see repo).
The model is decoupled: `execute` only validates and queues a request's images on the engine and returns
at once, so requests keep joining the running batch; the engine thread sends each request's final
response (its images, or its error) when its last image ends, and PROGRESS responses before that when
the request asked for them. A request with CANCEL set cancels the images of the REQUEST_ID it names.

Device: the instance's kind (KIND_GPU: that GPU, else the CPU). Engine settings come from the model
config's `parameters` (max_batch, max_queue, precision, compile, compile_cache_dir, run_to_completion,
warmup_iterations, torch_threads, drain_timeout_s), then from the environment the gateway reads too
(DDPM_COMPILE, DDPM_COMPILE_CACHE_DIR, DDPM_TORCH_THREADS), else the gateway's defaults: compiled (on the
CPU in the background, into the persistent package cache), intra-op threads measured per batch size. The
model folder is the one holding config.pbtxt unless `model_dir` names another.
`initialize` returns only after warm-up, so Triton reports the model READY only when it can serve. The
engine's log records (warm-up, thread choice, compile progress, failures) go to Triton's log, and the
stub's heap is set up as service.triton_worker.stub says.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.backends.triton.protocol import (
    INPUTS,
    WireRequest,
    error_tensors,
    progress_tensors,
    result_tensors,
)
from service.engine.devices import serving_devices
from service.engine.engine import Engine
from service.engine.errors import EngineDead, EngineError
from service.engine.generation import Collation, GenerationSpec
from service.engine.observer import EngineObserver, NullObserver
from service.engine.request import RowProgress, RowResult
from service.engine.settings import EngineSettings, Precision
from service.engine.threads import confine_to_one_thread
from service.model.manifest import read_manifest
from service.model.store import load_model
from service.triton_worker.metrics import GaugeRefresher, TritonMetricsObserver
from service.triton_worker.stub import log_to_triton, steady_heap

log = logging.getLogger(__name__)

WARMUP_TIMEOUT_SECONDS = 600.0


class TritonPythonModel:
    """The class name and the three methods are what Triton's Python backend calls."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only exists inside the backend stub

        self.pb = pb_utils
        log_to_triton(pb_utils)
        steady_heap()  # before the model's first allocation
        confine_to_one_thread()  # the stub's thread loads the model: only the engine thread keeps a team
        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        model_dir = Path(params.get("model_dir") or args["model_repository"])
        device = _device(args)
        self.drain_timeout = float(params.get("drain_timeout_s", "30"))
        # Metric labels use the manifest's name, as the gateway does (the Triton name is the folder's).
        observer = _observer(pb_utils, read_manifest(model_dir).name, str(device))
        model = load_model(model_dir, device=device)
        settings = engine_settings(params, os.environ)
        self.engine = Engine(model, settings, device=device, observer=observer, name=str(device))
        self.model_name = self.engine.model_name
        self.engine.start()
        if not self.engine.wait_ready(WARMUP_TIMEOUT_SECONDS):
            self.engine.stop(drain=False)
            raise RuntimeError(f"{model_dir}: the engine on {device} did not warm up")
        self.gauges: GaugeRefresher | None = None
        if isinstance(observer, _QueuedSteps):
            self.gauges = GaugeRefresher(partial(self._refresh_gauges, observer))
            self.gauges.start()
        log.info("serving %s from %s on %s", self.model_name, model_dir, device)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._handle(request)
        return None  # decoupled: every response goes through the request's response sender

    def finalize(self) -> None:
        if self.gauges is not None:
            self.gauges.stop()
        self.engine.stop(drain=True, timeout=self.drain_timeout)

    def _handle(self, request: Any) -> None:
        sender = request.get_response_sender()
        reply = _Reply(self.pb, sender)
        try:
            tensors = {}
            for name in INPUTS:
                tensor = self.pb.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            wire = WireRequest.from_tensors(tensors)
            if wire.cancel:
                self.engine.cancel(wire.request_id)
                reply.final({})
                return
            spec = wire.spec(self.model_name)
            pending = _PendingRequest(reply, wire, spec, self.engine.cancel)
            on_progress = pending.on_progress if wire.progress else None
            self.engine.submit(spec, wire.request_id, pending.on_done, on_progress)
        except EngineError as e:
            reply.final(error_tensors(e))
        except Exception as e:  # a bug here must answer this request, not hang it
            log.exception("handling a request failed")
            reply.final(error_tensors(EngineError(f"the worker failed: {type(e).__name__}: {e}")))

    def _refresh_gauges(self, observer: _QueuedSteps) -> None:
        observer.publish()
        observer.metrics.set_load(self.engine.load(), self.engine.memory_bytes())


class _Reply:
    """One request's response sender; sends are serialised (progress from the engine thread, a final
    answer from Triton's thread) and nothing is sent after the final response."""

    def __init__(self, pb_utils: Any, sender: Any) -> None:
        self.pb = pb_utils
        self.sender = sender
        self.lock = threading.Lock()
        self.closed = False

    def send(self, tensors: dict[str, np.ndarray], final: bool = False) -> None:
        outputs = [self.pb.Tensor(name, value) for name, value in tensors.items()]
        with self.lock:
            if self.closed:
                return
            self.closed = final
            flags = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            self.sender.send(self.pb.InferenceResponse(output_tensors=outputs), flags=flags)

    def final(self, tensors: dict[str, np.ndarray]) -> None:
        self.send(tensors, final=True)


class _PendingRequest:
    """Collects one request's rows (engine thread) and answers once the last one ends."""

    def __init__(self, reply: _Reply, wire: WireRequest, spec: GenerationSpec, cancel: Any) -> None:
        self.reply = reply
        self.wire = wire
        self.cancel = cancel
        self.collation = Collation(spec)
        self.cancelling = False

    def on_progress(self, progress: RowProgress) -> None:
        index = progress.request.image_index
        self.reply.send(progress_tensors(index, progress.steps_done, progress.num_steps, progress.preview))

    def on_done(self, result: RowResult) -> None:
        outcome = self.collation.add(result)
        if self.collation.failed and not self.cancelling:
            self.cancelling = True
            # The request has failed as a whole: stop its other images. Not from this callback (the
            # engine's callbacks must not call back into it), hence a short-lived thread.
            threading.Thread(target=self.cancel, args=(self.wire.request_id,), daemon=True).start()
        if outcome is None:
            return
        if isinstance(outcome, EngineError):
            self.reply.final(error_tensors(outcome))
            return
        rows = self.collation.ordered()
        self.reply.final(
            result_tensors(
                np.stack(outcome.images),
                int(outcome.steps),
                [r.queue_seconds for r in rows],
                [r.total_seconds for r in rows],
                outcome.degradation,
            )
        )


# config.pbtxt parameter -> the environment variable the gateway reads for the same setting
# (service.api.settings); a parameter wins over the variable.
ENVIRONMENT = {
    "compile": "DDPM_COMPILE",
    "compile_cache_dir": "DDPM_COMPILE_CACHE_DIR",
    "torch_threads": "DDPM_TORCH_THREADS",
}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def engine_settings(params: Mapping[str, str], environ: Mapping[str, str] | None = None) -> EngineSettings:
    """EngineSettings from config.pbtxt parameters (strings), then `environ` (ENVIRONMENT's variables);
    what neither sets takes the gateway's default, so a worker serves as the embedded server does:
    compiled (EngineSettings leaves compile to the device, eager on the CPU; the gateway compiles
    everywhere), packages in the default cache folder, threads measured. Raises ValueError on a bad value."""
    environ = environ or {}

    def value(key: str) -> str:
        variable = ENVIRONMENT.get(key)
        return (params.get(key) or (environ.get(variable, "") if variable else "")).strip()

    kwargs: dict[str, Any] = {"compile": True}
    for key in ("max_batch", "max_queue", "warmup_iterations", "torch_threads"):
        if value(key):
            kwargs["threads" if key == "torch_threads" else key] = _integer(key, value(key))
    if value("precision"):
        kwargs["precision"] = Precision(value("precision"))
    if value("compile_cache_dir"):
        kwargs["compile_cache_dir"] = value("compile_cache_dir")
    for key in ("compile", "run_to_completion"):  # run_to_completion: the benchmark's baseline only
        if value(key):
            kwargs[key] = _boolean(key, value(key))
    return EngineSettings(**kwargs)


def _integer(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {text!r}") from None


def _boolean(key: str, text: str) -> bool:
    if text.lower() not in (*TRUE, *FALSE):
        raise ValueError(f"{key} must be true or false, got {text!r}")
    return text.lower() in TRUE


def _device(args: dict[str, str]) -> torch.device:
    if args.get("model_instance_kind") == "GPU":
        if not torch.cuda.is_available():
            raise EngineDead("the instance is KIND_GPU but torch sees no CUDA device")
        return serving_devices(f"cuda:{args.get('model_instance_device_id', '0')}")[0]
    return serving_devices("cpu")[0]


def _observer(pb_utils: Any, model: str, engine: str) -> EngineObserver:
    try:
        return _QueuedSteps(TritonMetricsObserver(pb_utils, model, engine))
    except Exception:  # an older Triton without custom metrics (or histograms): serve without them
        log.warning("Triton custom metrics are unavailable; the worker publishes no engine metrics")
        return NullObserver()


class _QueuedSteps(NullObserver):
    """The worker's engine observer: per-iteration figures are queued on the engine thread and published
    by the gauge thread (GaugeRefresher, once a second). Each pb_utils metric update is an IPC round trip
    to tritonserver, 36-44 µs in the stub (measured over 2,000 calls), and on_step makes five: on the
    engine thread they would lengthen every iteration, an idle K=50 request by about 10 ms."""

    def __init__(self, metrics: TritonMetricsObserver) -> None:
        self.metrics = metrics
        self.steps: deque[tuple[str, int, int, float]] = deque()

    def on_ready(self, engine: str, warmup_seconds: float) -> None:
        self.metrics.on_ready(engine, warmup_seconds)

    def on_executor_restart(self, engine: str, error: str) -> None:
        self.metrics.on_executor_restart(engine, error)

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        self.steps.append((engine, active_rows, bucket, seconds))

    def publish(self) -> None:
        while self.steps:
            self.metrics.on_step(*self.steps.popleft())
