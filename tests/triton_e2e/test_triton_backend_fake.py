"""TritonBackend's routing, failover and deadlines against fake worker connections (no server, no
tritonclient): a stalled worker cannot hold a request past its deadline; a broken stream's requests go
to the other worker; with no live worker `submit` refuses at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from service.backends.base import GenerationSpec
from service.backends.triton import TritonBackend
from service.backends.triton.protocol import StreamEvent, WireRequest
from service.engine.errors import DeadlineExceeded, EngineDead
from service.model.presets import get_preset
from service.model.store import random_model_dir


class FakeConnection:
    """Answers nothing on its own: the test plays the worker."""

    live: dict[str, bool] = {}

    def __init__(self, url: str, on_event: Callable[[StreamEvent], None]) -> None:
        self.url, self.on_event, self.epoch = url, on_event, 1
        self.sent: list[tuple[str, WireRequest]] = []

    def open(self) -> None:
        self.epoch += 1

    def check(self, models: list[str], timeout: float) -> set[str]:
        if not FakeConnection.live.get(self.url, True):
            raise ConnectionError("down")
        return set(models)

    def send(self, model: str, wire: WireRequest, request_id: str) -> None:
        self.sent.append((request_id, wire))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model_dir(get_preset("tiny-test"), tmp_path_factory.mktemp("fake") / "tiny", name="tiny")


def spec(timeout: float | None = 30.0) -> GenerationSpec:
    return GenerationSpec("tiny", class_label=1, steps=5, num_images=1, seed=0, timeout_seconds=timeout)


async def started(model_dir: Path, urls: list[str]) -> tuple[TritonBackend, dict[str, FakeConnection]]:
    connections: dict[str, FakeConnection] = {}

    def connect(url: str, on_event: Callable[[StreamEvent], None]) -> FakeConnection:
        connections[url] = FakeConnection(url, on_event)
        return connections[url]

    backend = TritonBackend(urls, [model_dir], connect=connect, health_interval=0.05)  # type: ignore[arg-type]
    await backend.start()
    assert backend.ready
    return backend, connections


def test_a_stalled_worker_cannot_hold_a_request_past_its_deadline(model_dir: Path) -> None:
    async def scenario() -> None:
        backend, connections = await started(model_dir, ["a:1"])
        generation = backend.submit(spec(timeout=0.2))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(generation.result(), timeout=5)
        sent = [wire for _, wire in connections["a:1"].sent]
        assert sent[-1].cancel and sent[-1].request_id == generation.id  # the worker is told to stop
        await backend.stop(drain=False)

    asyncio.run(scenario())


def test_a_broken_stream_moves_its_requests_to_the_other_worker(model_dir: Path) -> None:
    async def scenario() -> None:
        backend, connections = await started(model_dir, ["a:1", "b:1"])
        generations = [backend.submit(spec()) for _ in range(4)]
        on_a = [g for g in generations if g.worker is not None and g.worker.url == "a:1"]
        assert len(on_a) == 2  # least outstanding: two each
        a = connections["a:1"]
        a.on_event(StreamEvent("a:1", a.epoch, None, None, True, ConnectionError("reset"), broken=True))
        await asyncio.sleep(0.05)
        assert all(g.worker is not None and g.worker.url == "b:1" for g in on_a)
        assert {wire.request_id for _, wire in connections["b:1"].sent} == {g.id for g in generations}
        FakeConnection.live["b:1"] = False  # both gone: the rest fail with a clear error, none hangs
        FakeConnection.live["a:1"] = False
        results = await asyncio.wait_for(
            asyncio.gather(*(g.result() for g in generations), return_exceptions=True), timeout=5
        )
        assert all(isinstance(r, EngineDead) for r in results), results
        with pytest.raises(EngineDead, match="no Triton worker"):
            backend.submit(spec())
        assert not backend.ready
        FakeConnection.live["a:1"] = True  # a worker is back: served again after a health check
        await asyncio.sleep(0.2)
        assert backend.ready and backend.submit(spec()).worker is not None
        await backend.stop(drain=False)
        FakeConnection.live.clear()

    asyncio.run(scenario())
