"""The engine loop thread end to end with the tiny model (a few steps per request)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from service.diffusion.sampling import Denoiser
from service.engine.engine import Engine
from service.engine.errors import (
    Cancelled,
    DeadlineExceeded,
    EngineDead,
    EngineShuttingDown,
    ExecutorFailed,
    InvalidRequest,
    QueueFull,
)
from service.engine.generation import GenerationSpec
from service.engine.observer import NullObserver
from service.engine.pool import EnginePool
from service.engine.request import Request, RowProgress, RowResult, RowStatus
from service.engine.settings import EngineSettings
from service.engine.solo import sample
from service.images import to_uint8
from service.model.store import LoadedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TIMEOUT = 60.0

EngineFactory = Callable[..., Engine]


def settings(**overrides: object) -> EngineSettings:
    return EngineSettings(**{"max_batch": 4, "warmup_iterations": 1, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def engines(tiny_model: LoadedModel) -> Iterator[EngineFactory]:
    started: list[Engine] = []

    def make(denoiser: Denoiser | None = None, observer: object = None, **overrides: object) -> Engine:
        engine = Engine(tiny_model, settings(**overrides), denoiser=denoiser, observer=observer)  # type: ignore[arg-type]
        engine.start()
        assert engine.wait_ready(TIMEOUT)
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.stop(drain=False, timeout=TIMEOUT)


class Results:
    """on_done / on_progress sinks that tests can wait on."""

    def __init__(self) -> None:
        self.done: dict[str, RowResult] = {}
        self.progress: list[RowProgress] = []
        self.started = threading.Event()
        self._cond = threading.Condition()

    def on_done(self, result: RowResult) -> None:
        with self._cond:
            self.done[result.request.request_id] = result
            self._cond.notify_all()

    def on_progress(self, progress: RowProgress) -> None:
        self.progress.append(progress)
        self.started.set()

    def wait(self, jobs: Jobs) -> list[RowResult]:
        ids = [i for job in jobs for i in job.row_ids]
        with self._cond:
            ok = self._cond.wait_for(lambda: all(i in self.done for i in ids), TIMEOUT)
        assert ok, f"no result for {[i for i in ids if i not in self.done]}"
        return [self.done[i] for i in ids]


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.finished: list[RowStatus] = []
        self.events: list[str] = []

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        self.steps.append((active_rows, bucket))

    def on_row_finished(
        self, engine: str, request: Request, status: RowStatus, q: float, total: float
    ) -> None:
        self.finished.append(status)

    def on_rejected(self, engine: str, reason: str) -> None:
        self.events.append(f"rejected:{reason}")

    def on_executor_restart(self, engine: str, error: str) -> None:
        self.events.append("restart")


class Flaky:
    """The model's denoiser, made to raise on a chosen call (a simulated CUDA error) or on every call."""

    def __init__(self, denoise: Denoiser) -> None:
        self.denoise = denoise
        self.fail_in: int | None = None  # calls still to succeed before one fails
        self.broken = False

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        if self.fail_in == 0 or self.broken:
            self.fail_in = None
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        if self.fail_in is not None:
            self.fail_in -= 1
        return self.denoise(x_t, t, y)


class Job:
    """One generation and the group id it is submitted under; `a + b` lists two, submitted in turn."""

    def __init__(self, spec: GenerationSpec, group: str) -> None:
        self.spec, self.group = spec, group
        self.row_ids = [f"{group}/{i}" for i in range(spec.num_images)]

    def __iter__(self) -> Iterator[Job]:
        return iter([self])

    def __add__(self, other: Job) -> list[Job]:
        return [self, other]


Jobs = Job | list[Job]


def job(group: str, model: str, label: int | None, steps: int | str, n: int = 1, **kw: object) -> Job:
    return Job(GenerationSpec(model, label, steps, n, **kw), group)  # type: ignore[arg-type]


def rows(model: LoadedModel, group: str, steps: int, n: int = 1, **kw: object) -> Job:
    return job(group, model.name, 3, steps, n, **kw)


def submit(target: Engine | EnginePool, jobs: Jobs, *callbacks: Callable) -> str | int:
    answers = [target.submit(j.spec, j.group, *callbacks) for j in jobs]
    return answers[-1]


def test_generate_matches_solo_and_reports_progress(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    recorder = Recorder()
    engine = engines(observer=recorder)
    results = Results()
    requests = rows(tiny_model, "g", 5, 2, seed=4, sampler="ddim")
    submit(engine, requests, results.on_done, results.on_progress)
    out = results.wait(requests)
    solo = to_uint8(sample(tiny_model, requests.spec))
    for result, expected in zip(out, solo, strict=True):
        assert result.ok and result.error is None and result.steps_done == 5
        assert result.image is not None and int(np.abs(result.image.astype(int) - expected).max()) <= 1
        assert result.total_seconds >= result.queue_seconds >= 0
    assert [p.steps_done for p in results.progress if p.request.image_index == 0] == [1, 2, 3, 4]
    assert recorder.steps[0] == (2, 2) and recorder.finished == [RowStatus.FINISHED] * 2
    idle = engine.load()  # the autoscaling signal's halves: nothing left, the measured rate kept
    assert idle.backlog_steps == 0 and idle.row_steps_per_second > 0

    def raising(result: RowResult) -> None:
        raise ValueError("a broken callback must not stop the engine")

    submit(engine, rows(tiny_model, "h", 2), raising)
    assert len(engine.generate(rows(tiny_model, "i", 2).spec, TIMEOUT).images) == 1


def test_invalid_requests_are_refused_synchronously(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    recorder = Recorder()
    engine = engines(observer=recorder)
    bad = [
        (job("a", tiny_model.name, 10, 5), "class_label"),  # label out of range
        (job("b", tiny_model.name, 3, 1001), "steps"),  # K > T
        (job("c", tiny_model.name, 3, "ddim7x"), "steps"),
        (job("d", "another-model", 3, 5), "model"),
        (job("e", tiny_model.name, None, 5), "class_label"),  # the model is class-conditional
        (job("f", tiny_model.name, 3, 5, sampler="plms"), "sampler"),
        (job("g", tiny_model.name, 3, 5, eta=0.5), "eta"),  # eta is DDIM's
        (job("h", tiny_model.name, 3, 5, sampler="ddim", eta=1.5), "eta"),
        (job("i", tiny_model.name, 3, 5, 0), "num_images"),
    ]
    for requests, field in bad:
        with pytest.raises(InvalidRequest) as info:
            submit(engine, requests)
        assert info.value.field == field, str(info.value)
    assert recorder.events == ["rejected:invalid_request"] * len(bad)
    assert engine.load().total == 0


def test_cancel_in_flight_and_queued(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    engine = engines(max_batch=1)
    results = Results()
    long, queued = rows(tiny_model, "long", 1000), rows(tiny_model, "queued", 5)
    submit(engine, long, results.on_done, results.on_progress)
    submit(engine, queued, results.on_done)
    assert results.started.wait(TIMEOUT)
    assert engine.cancel("queued") == 1 and engine.cancel("long") == 1
    for result in results.wait(long + queued):
        assert result.status is RowStatus.CANCELLED and isinstance(result.error, Cancelled)
        assert result.image is None
    assert 0 < results.done["long/0"].steps_done < 1000 and results.done["queued/0"].steps_done == 0
    assert engine.cancel("long") == 0


def test_deadlines_in_queue_and_in_flight(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    engine = engines(max_batch=1)
    results = Results()
    long = rows(tiny_model, "long", 1000, timeout_seconds=1.0)
    short = rows(tiny_model, "short", 5, timeout_seconds=0.3)
    submit(engine, long, results.on_done)
    submit(engine, short, results.on_done)
    in_flight, in_queue = results.wait(long + short)
    assert isinstance(in_flight.error, DeadlineExceeded) and 0 < in_flight.steps_done < 1000
    assert isinstance(in_queue.error, DeadlineExceeded) and in_queue.steps_done == 0
    assert in_queue.status is RowStatus.DEADLINE_EXCEEDED


def test_queue_full(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    engine = engines(max_batch=1, max_queue=2)
    results = Results()
    submit(engine, rows(tiny_model, "running", 1000), results.on_done, results.on_progress)
    assert results.started.wait(TIMEOUT)  # admitted: it no longer counts against the queue
    submit(engine, rows(tiny_model, "waiting", 5, 2))
    with pytest.raises(QueueFull) as info:
        submit(engine, rows(tiny_model, "refused", 5))
    assert info.value.retry_after >= 1.0
    assert engine.load().queue_depth == 2 and engine.load().in_flight == 1


def test_stop_drains_then_refuses(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    engine = engines(max_batch=2)
    results = Results()
    requests = [rows(tiny_model, g, 4, 2) for g in "abc"]  # 6 rows, 2 slots: most are queued
    submit(engine, requests, results.on_done)
    engine.stop(drain=True, timeout=TIMEOUT)
    assert all(result.ok for result in results.wait(requests))
    assert not engine.ready and not engine.alive
    with pytest.raises(EngineShuttingDown):
        submit(engine, rows(tiny_model, "late", 4))


def test_stop_without_drain_fails_what_is_left(tiny_model: LoadedModel, engines: EngineFactory) -> None:
    engine = engines(max_batch=1)
    results = Results()
    requests = rows(tiny_model, "long", 1000) + rows(tiny_model, "queued", 1000)
    submit(engine, requests, results.on_done, results.on_progress)
    assert results.started.wait(TIMEOUT)
    engine.stop(drain=False, timeout=TIMEOUT)
    for result in results.wait(requests):
        assert isinstance(result.error, EngineShuttingDown) and result.status is RowStatus.FAILED


def test_executor_crash_fails_only_in_flight_rows_and_restarts(
    tiny_model: LoadedModel, engines: EngineFactory
) -> None:
    flaky, recorder = Flaky(tiny_model.denoiser), Recorder()
    engine = engines(denoiser=flaky, observer=recorder, max_batch=2)
    flaky.fail_in = 2  # the third step of the two in-flight rows raises
    results = Results()
    in_flight, queued = rows(tiny_model, "a", 20, 2), rows(tiny_model, "b", 3)
    submit(engine, in_flight, results.on_done)
    submit(engine, queued, results.on_done)
    *lost, survivor = results.wait(in_flight + queued)
    for result in lost:
        assert isinstance(result.error, ExecutorFailed) and result.steps_done == 2
        assert "device error" in str(result.error) and "illegal memory access" in str(result.error)
    assert survivor.ok
    assert len(engine.generate(rows(tiny_model, "c", 3).spec, TIMEOUT).images) == 1
    assert engine.warmed_up and recorder.events == ["restart"] and engine.ready


def test_engine_dies_when_the_executor_cannot_restart(
    tiny_model: LoadedModel, engines: EngineFactory
) -> None:
    flaky = Flaky(tiny_model.denoiser)
    engine = engines(denoiser=flaky, max_batch=1)
    flaky.broken = True
    results = Results()
    in_flight, queued = rows(tiny_model, "a", 5), rows(tiny_model, "b", 5)
    submit(engine, in_flight + queued, results.on_done)
    first, second = results.wait(in_flight + queued)
    assert isinstance(first.error, ExecutorFailed) and isinstance(second.error, EngineDead)
    with pytest.raises(EngineDead):
        submit(engine, rows(tiny_model, "c", 5))
    assert not engine.ready and not engine.wait_ready(0.1)


def test_pool_routes_and_reports(tiny_model: LoadedModel) -> None:
    pool = EnginePool.create(lambda device: tiny_model, settings(), devices=[torch.device("cpu")])
    pool.start()
    try:
        assert pool.wait_ready(TIMEOUT) and pool.ready
        results = Results()
        requests = rows(tiny_model, "g", 3, 2)
        assert submit(pool, requests, results.on_done) == "cpu"
        assert all(result.ok for result in results.wait(requests))
        assert pool.memory_bytes()["cpu"] > 0 and pool.loads()["cpu"].total == 0
        assert pool.cancel("nothing") == 0
    finally:
        pool.stop(drain=True, timeout=TIMEOUT)
    assert not pool.ready
    with pytest.raises(EngineDead):
        submit(pool, rows(tiny_model, "late", 3))
