"""The CUDA path's logic, checked on the CPU: capture lock, replay check, device plumbing, one sync per
step, compile fallback. Graph capture runs through EmulatedGraphs (a replay reruns the captured body) or
stand-ins for torch.cuda; what needs a real device is at the end, marked gpu."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import service.engine.compile as compile_module
import service.engine.executor as executor_module
from service.engine.buckets import GraphMismatch
from service.engine.engine import Engine
from service.engine.executor import Executor
from service.engine.generation import GenerationSpec
from service.engine.graphs import CAPTURE_LOCK, CudaGraphs, EmulatedGraphs, Graph, enter_device
from service.engine.request import Request, RowState
from service.engine.settings import EngineSettings, Precision
from service.engine.tables import StepTables
from service.engine.transfers import Transfers
from service.model.store import LoadedModel, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRAPHED: dict[str, Any] = {"max_batch": 4, "warmup_iterations": 1, "emulate_graphs": True, "compile": False}


def executor(model: LoadedModel, **settings: Any) -> Executor:
    tables = StepTables(model.manifest.diffusion, gamma=model.gamma_per_step)
    built = Executor(model, EngineSettings(**{**GRAPHED, **settings}), tables)
    built.warm_up()
    return built


def rows_of(model: LoadedModel, executor: Executor, steps: int, count: int, **kw: Any) -> list[RowState]:
    rows = []
    for i in range(count):
        request = Request(f"{i}/0", str(i), model.name, class_label=i % 10, steps=steps, seed=i, **kw)
        row = RowState(request, executor.tables.get(steps).num_steps)
        row.slot = i
        rows.append(row)
    executor.admit(rows)
    return rows


def images(executor: Executor, rows: list[RowState]) -> dict[str, np.ndarray]:
    done: dict[str, np.ndarray] = {}
    active = list(rows)
    while active:
        outcome = executor.step(active)
        assert not outcome.non_finite
        done.update({row.request.request_id: image for row, image in outcome.finished})
        active = [row for row in active if row.request.request_id not in done]
    return done


class Watched(EmulatedGraphs):
    """Records, for every capture, whether CAPTURE_LOCK was held and how many captures overlapped."""

    inside = 0
    most = 0
    unlocked = 0
    guard = threading.Lock()

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        with Watched.guard:
            Watched.inside += 1
            Watched.most = max(Watched.most, Watched.inside)
            Watched.unlocked += not CAPTURE_LOCK.locked()
        try:
            threading.Event().wait(0.02)  # widen the window in which another engine could capture
            return super().capture(body, pool)
        finally:
            with Watched.guard:
                Watched.inside -= 1


def test_two_engines_warming_at_once_capture_one_at_a_time(
    tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "graph_backend", lambda settings, device: Watched())
    settings = EngineSettings(**GRAPHED)
    engines = [Engine(load_model(tiny_model_dir), settings, name=f"e{i}") for i in range(2)]
    for engine in engines:
        engine.start()
    try:
        assert all(engine.wait_ready(120) for engine in engines)
        assert Watched.most == 1 and Watched.unlocked == 0
        spec = GenerationSpec(engines[0].model_name, 3, 4, seed=7, num_images=2)
        first, second = (engine.generate(spec, timeout=60) for engine in engines)
        assert all(np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    finally:
        for engine in engines:
            engine.stop()


def test_graphed_executor_matches_eager_with_padding(tiny_model: LoadedModel) -> None:
    graphed, eager = executor(tiny_model), executor(tiny_model, emulate_graphs=False)
    assert graphed.runner.cuda_graphs and not eager.runner.cuda_graphs
    # 3 rows pad to bucket 4; the padding must not change the real rows.
    got, want = (
        images(graphed, rows_of(tiny_model, graphed, 5, 3)),
        images(eager, rows_of(tiny_model, eager, 5, 3)),
    )
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


class Stale(EmulatedGraphs):
    """A graph that recorded nothing: replay leaves the static outputs as capture left them."""

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        body()
        return _NoReplay(), pool


class _NoReplay:
    def replay(self) -> None:
        pass


def test_a_stale_graph_fails_warm_up(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "graph_backend", lambda settings, device: Stale())
    with pytest.raises(GraphMismatch, match="differs from the eager network"):
        executor(tiny_model)


class Recording(EmulatedGraphs):
    """Counts how deep inside device_context() each capture and replay ran."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.seen: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def device_context(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        self.seen.append(("capture", self.depth))
        graph, pool = super().capture(body, pool)
        return _Tracked(self, graph), pool


class _Tracked:
    def __init__(self, owner: Recording, graph: Graph) -> None:
        self.owner, self.graph = owner, graph

    def replay(self) -> None:
        self.owner.seen.append(("replay", self.owner.depth))
        self.graph.replay()


def test_capture_and_replay_run_inside_the_device_context(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Recording()
    monkeypatch.setattr(executor_module, "graph_backend", lambda settings, device: backend)
    graphed = executor(tiny_model)
    images(graphed, rows_of(tiny_model, graphed, 2, 2))
    assert {kind for kind, _ in backend.seen} == {"capture", "replay"}
    assert all(depth >= 1 for _, depth in backend.seen)


class FakeCuda:
    """torch.cuda's names that CudaGraphs and enter_device use, recording the current device of each."""

    def __init__(self) -> None:
        self.current: list[torch.device] = []
        self.calls: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def device(self, device: torch.device) -> Iterator[None]:
        self.current.append(device)
        try:
            yield
        finally:
            self.current.pop()

    def _now(self) -> Any:
        return self.current[-1] if self.current else None

    def Stream(self, device: torch.device) -> Any:  # noqa: N802 - torch.cuda's name
        self.calls.append(("Stream", device, self._now()))
        return f"stream on {device}"

    def CUDAGraph(self) -> Any:  # noqa: N802 - torch.cuda's name
        return type("G", (), {"pool": lambda self: "pool"})()

    @contextlib.contextmanager
    def graph(self, graph: Any, pool: Any, stream: Any, capture_error_mode: str) -> Iterator[None]:
        self.calls.append(("graph", (stream, capture_error_mode), self._now()))
        yield

    def synchronize(self, device: torch.device) -> None:
        self.calls.append(("synchronize", device, self._now()))

    def set_device(self, device: torch.device) -> None:
        self.calls.append(("set_device", device, None))


def test_cuda_graphs_use_their_own_device_and_stream() -> None:
    cuda, device = FakeCuda(), torch.device("cuda", 1)  # a device object: nothing touches a GPU
    graphs = CudaGraphs(device, cuda)
    assert cuda.calls == [("Stream", device, device)]  # created on cuda:1, inside its context
    with graphs.device_context():
        graph, pool = graphs.capture(lambda: None, None)
    assert pool == "pool"
    assert ("graph", ("stream on cuda:1", "thread_local"), device) in cuda.calls
    assert all(now == device for _, _, now in cuda.calls)
    enter_device(device, cuda)
    enter_device(torch.device("cpu"), cuda)  # nothing to set on the CPU
    assert cuda.calls[-1] == ("set_device", device, None)


class SyncCounter(TorchFunctionMode):
    """Counts the calls that wait for the device on CUDA: reads to the host, and uploads that are not
    non_blocking. Only until the step's download (after it, the host works on host copies)."""

    READS = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
    }

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.paused = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.paused:
            blocking_to = (
                func is torch.Tensor.to and _to_device(args, kwargs) and not kwargs.get("non_blocking")
            )
            made_on_device = func in (torch.tensor, torch.as_tensor) and "device" in kwargs
            self.count += func in self.READS or blocking_to or made_on_device
        return func(*args, **kwargs)


def _to_device(args: Any, kwargs: dict[str, Any]) -> bool:
    """Tensor.to(...) names a device (not only a dtype): a copy across the bus on CUDA."""
    targets = [*args[1:], kwargs.get("device")]
    return any(
        isinstance(a, (str, torch.device)) or (isinstance(a, torch.Tensor) and a is not args[0])
        for a in targets
    )


def test_one_sync_per_step(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    graphed = executor(tiny_model)
    counter = SyncCounter()
    download = Transfers.download

    def counted(self: Transfers, *tensors: torch.Tensor) -> list[torch.Tensor]:
        counter.paused = True
        return download(self, *tensors)

    monkeypatch.setattr(Transfers, "download", counted)
    rows = rows_of(tiny_model, graphed, 3, 3, preview_every=1)  # finishing rows and previews included
    steps = 0
    while rows:
        before = graphed.transfers.syncs
        counter.paused = False
        with counter:
            outcome = graphed.step(rows)
        steps += 1
        assert graphed.transfers.syncs - before == 1
        assert counter.count == 0, f"{counter.count} device waits before the step's download"
        ended = {id(row) for row, _ in outcome.finished}
        rows = [row for row in rows if id(row) not in ended]
    assert steps == 3


def test_a_failed_compile_falls_back_to_eager_with_one_warning(
    tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        def call(*a: Any, **k: Any) -> Any:
            raise RuntimeError("InductorError: no working C compiler")

        return call

    monkeypatch.setattr(compile_module.torch, "compile", broken)
    model = load_model(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="service.engine.buckets"):
        graphed = executor(model, compile=True, compile_in_background=False)
    assert (
        graphed.runner.compile_error is not None and "no working C compiler" in graphed.runner.compile_error
    )
    assert len([r for r in caplog.records if "compiling the network failed" in r.message]) == 1
    eager = executor(load_model(tiny_model_dir), emulate_graphs=False)
    got, want = images(graphed, rows_of(model, graphed, 3, 2)), images(eager, rows_of(model, eager, 3, 2))
    assert all(np.array_equal(got[k], want[k]) for k in got)


def test_compile_on_cuda_needs_a_c_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(compile_module, "c_compiler", lambda: "/usr/bin/gcc")
    assert compile_module.compiles_at_warm_up(EngineSettings(), cuda)
    monkeypatch.setattr(compile_module, "c_compiler", lambda: None)
    assert not compile_module.compiles_at_warm_up(EngineSettings(), cuda)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_modes_with_their_own_graphs_are_refused(mode: str) -> None:
    with pytest.raises(ValueError, match="captures CUDA graphs of its own"):
        EngineSettings(compile_mode=mode)
    EngineSettings(compile_mode="max-autotune-no-cudagraphs")


# -- on a device ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager_and_sync_once_per_step(tiny_model_dir: Any, compile: bool) -> None:
    device = torch.device("cuda", torch.cuda.device_count() - 1)  # the last: not cuda:0 where there are two
    model = load_model(tiny_model_dir, device)
    tables = StepTables(model.manifest.diffusion)
    settings = EngineSettings(max_batch=4, compile=compile, precision=Precision.FP32)
    graphed = Executor(model, settings, tables, device)
    graphed.warm_up()
    assert graphed.runner.cuda_graphs and graphed.runner.compile_error is None
    eager = Executor(
        load_model(tiny_model_dir, device),
        EngineSettings(max_batch=4, compile=False, cuda_graphs=False, precision=Precision.FP32),
        tables,
        device,
    )
    eager.warm_up()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        got = images(graphed, rows_of(model, graphed, 5, 3))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    want = images(eager, rows_of(model, eager, 5, 3))
    assert all(np.abs(got[k].astype(int) - want[k].astype(int)).max() <= 2 for k in got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_engines_on_one_gpu_warm_up_at_once(tiny_model_dir: Any) -> None:
    device = torch.device("cuda", 0)
    settings = EngineSettings(max_batch=4, precision=Precision.FP32)
    engines = [
        Engine(load_model(tiny_model_dir, device), settings, device=device, name=f"e{i}") for i in range(2)
    ]
    for engine in engines:
        engine.start()
    try:
        assert all(engine.wait_ready(600) for engine in engines)
        spec = GenerationSpec(engines[0].model_name, 3, 4, seed=7, num_images=2)
        first, second = (engine.generate(spec, timeout=120) for engine in engines)
        assert all(np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    finally:
        for engine in engines:
            engine.stop()
