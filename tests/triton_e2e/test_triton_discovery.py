"""Discovery of Triton workers: membership from a source whose answer changes, draining, ejection, the
re-send cap and least-outstanding-work routing, against fake worker connections (no server); and the
DNS source against a real DNS server on loopback (dnslib)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.backends.base import GenerationSpec
from service.backends.triton import TritonBackend
from service.backends.triton.discovery import DiscoveryError, DnsMembers
from service.backends.triton.fleet import is_unavailable
from service.backends.triton.protocol import StreamEvent, WireRequest, result_tensors
from service.backends.triton.routing import Router
from service.engine.errors import EngineDead
from service.model.presets import get_preset
from service.model.store import random_model_dir


class FakeConnection:
    def __init__(self, url: str, on_event: Callable[[StreamEvent], None]) -> None:
        self.url, self.on_event, self.epoch = url, on_event, 1
        self.sent: list[tuple[str, WireRequest]] = []
        self.closed = False

    def open(self) -> None:
        self.epoch += 1

    def check(self, models: list[str], timeout: float) -> set[str]:
        return set(models)

    def send(self, model: str, wire: WireRequest, request_id: str) -> None:
        self.sent.append((request_id, wire))

    def close(self) -> None:
        self.closed = True

    def answer(self, request_id: str) -> None:
        """The worker finishes the request: one final response with one image."""
        tensors = result_tensors(np.zeros((1, 4, 4, 1), np.uint8), 5, [0.0], [0.1])
        response = SimpleNamespace(outputs=[SimpleNamespace(name=name) for name in tensors])
        result = SimpleNamespace(get_response=lambda: response, as_numpy=tensors.__getitem__)
        self.on_event(StreamEvent(self.url, self.epoch, request_id, result, True))

    def fail(self, request_id: str, message: str) -> None:
        self.on_event(StreamEvent(self.url, self.epoch, request_id, None, True, RuntimeError(message)))

    def break_stream(self) -> None:
        self.on_event(StreamEvent(self.url, self.epoch, None, None, True, ConnectionError("reset"), True))


class FakeSource:
    description = "fake"

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.failing = False

    def resolve(self) -> list[str]:
        if self.failing:
            raise DiscoveryError("SERVFAIL")
        return list(self.urls)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model_dir(get_preset("tiny-test"), tmp_path_factory.mktemp("disc") / "tiny", name="tiny")


def spec(steps: int = 5) -> GenerationSpec:
    return GenerationSpec("tiny", class_label=1, steps=steps, num_images=1, seed=0, timeout_seconds=30.0)


async def started(
    model_dir: Path, source: FakeSource, static: list[str] | None = None
) -> tuple[TritonBackend, dict[str, FakeConnection]]:
    connections: dict[str, FakeConnection] = {}

    def connect(url: str, on_event: Callable[[StreamEvent], None]) -> FakeConnection:
        connections[url] = FakeConnection(url, on_event)
        return connections[url]

    backend = TritonBackend(
        static or [],
        [model_dir],
        connect=connect,  # type: ignore[arg-type]
        health_interval=0.05,
        dns=source,
        resolve_interval=0.05,
    )
    await backend.start()
    return backend, connections


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def request_ids(connection: FakeConnection) -> list[str]:
    return [request_id for request_id, wire in connection.sent if not wire.cancel]


def test_workers_join_and_leave_with_the_answers_of_discovery(model_dir: Path) -> None:
    async def scenario() -> None:
        source = FakeSource(["10.0.0.1:8001"])
        backend, connections = await started(model_dir, source, static=["static:8001"])
        assert backend.ready and backend.fleet().workers == {"live": 2, "unready": 0, "draining": 0}
        source.urls = ["10.0.0.1:8001", "10.0.0.2:8001"]  # scale-up: checked, then served
        await eventually(lambda: backend.fleet().workers["live"] == 3)
        first = [backend.submit(spec()) for _ in range(3)]
        assert sorted(g.worker.url for g in first if g.worker) == [
            "10.0.0.1:8001",
            "10.0.0.2:8001",
            "static:8001",
        ]
        (leaving,) = [g for g in first if g.worker and g.worker.url == "10.0.0.2:8001"]
        source.urls = ["10.0.0.1:8001"]  # scale-down: no new work, its request finishes there
        await eventually(lambda: backend.fleet().workers == {"live": 2, "unready": 0, "draining": 1})
        later = [backend.submit(spec()) for _ in range(4)]
        assert all(g.worker and g.worker.url != "10.0.0.2:8001" for g in later)
        connections["10.0.0.2:8001"].answer(request_ids(connections["10.0.0.2:8001"])[0])
        result = await asyncio.wait_for(leaving.result(), 5)
        assert result.steps == 5
        assert backend.fleet().workers == {"live": 2, "unready": 0, "draining": 0}
        await eventually(lambda: connections["10.0.0.2:8001"].closed)  # drained, then closed (a thread)
        source.failing = True  # a failed lookup drains nobody
        await eventually(lambda: backend.fleet().resolves.get("failed", 0) >= 2)
        fleet = backend.fleet()
        assert fleet.workers["live"] == 2 and fleet.resolves["failed"] >= 1 and fleet.resolves["ok"] >= 2
        source.failing, source.urls = False, []  # the name has no records: only the static worker is left
        await eventually(lambda: len(backend.router.serving("tiny")) == 1)
        assert (
            backend.router.serving("tiny")[0].url == "static:8001"
            and len(backend.router.serving("tiny")) == 1
        )
        assert backend.fleet().changes == {"joined": 2, "left": 2}
        await backend.stop(drain=False)

    asyncio.run(scenario())


def test_a_failed_request_is_sent_again_once_and_unavailable_ejects_at_once(model_dir: Path) -> None:
    async def scenario() -> None:
        source = FakeSource(["a:1", "b:1", "c:1"])
        backend, connections = await started(model_dir, source)
        generation = backend.submit(spec())
        first = generation.worker
        assert first is not None
        connections[first.url].fail(
            request_ids(connections[first.url])[0], "[request id: x] Server is stopping"
        )
        await asyncio.sleep(0.01)
        assert not first.live and backend.fleet().ejections == {"unavailable": 1}
        second = generation.worker
        assert second is not None and second is not first and generation.resends == 1
        connections[second.url].break_stream()  # the second worker dies too: no third try
        with pytest.raises(EngineDead):
            await asyncio.wait_for(generation.result(), 5)
        fleet = backend.fleet()
        assert fleet.resends == 1 and fleet.ejections == {"unavailable": 1, "stream": 1}
        # the health checks pass again: both are admitted back
        await eventually(lambda: backend.fleet().workers["live"] == 3)
        await backend.stop(drain=False)

    asyncio.run(scenario())


def test_what_reads_as_a_worker_shutting_down() -> None:
    after_sigterm = "[request id: 1a:1] Request for unknown model: 'tiny' has no available versions"
    assert is_unavailable(RuntimeError(after_sigterm))
    assert is_unavailable(RuntimeError("[StatusCode.UNAVAILABLE] Server is stopping"))
    assert not is_unavailable(RuntimeError("unexpected input CLASS_LABEL shape"))


def test_routing_weighs_requests_by_their_steps() -> None:
    router = Router(["a", "b"])
    for worker in router.workers:
        worker.live, worker.ready_models = True, {"m"}
    a, b = router.workers
    a.assign(images=1, steps=100)
    b.assign(images=1, steps=10)
    b.assign(images=1, steps=10)
    assert router.choose("m") is b  # two K=10 requests are less work than one K=100
    b.assign(images=4, steps=400)
    assert router.choose("m") is a


@pytest.fixture()
def dns_server() -> Iterator[tuple[str, dict[str, list[str]]]]:
    dnslib_server = pytest.importorskip("dnslib.server")
    from dnslib import QTYPE, RR, A

    records: dict[str, list[str]] = {"workers.test.": ["127.0.0.2", "127.0.0.3"]}

    class Resolver:
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            name = str(request.q.qname)
            if name not in records:
                reply.header.rcode = 3  # NXDOMAIN
            elif request.q.qtype == QTYPE.A:
                for address in records[name]:
                    reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=1))
            return reply

    server = dnslib_server.DNSServer(Resolver(), port=0, address="127.0.0.1")
    server.start_thread()
    port = server.server.server_address[1]
    yield f"127.0.0.1:{port}", records
    server.stop()


def test_dns_members_follow_a_real_dns_server(dns_server: tuple[str, dict[str, list[str]]]) -> None:
    nameserver, records = dns_server
    members = DnsMembers("workers.test:8001", nameserver)
    assert members.resolve() == ["127.0.0.2:8001", "127.0.0.3:8001"]
    records["workers.test."] = ["127.0.0.4"]
    assert members.resolve() == ["127.0.0.4:8001"]
    assert DnsMembers("nobody.test:8001", nameserver).resolve() == []  # NXDOMAIN: no workers
    with pytest.raises(DiscoveryError):  # nothing answers there: unknown, not empty
        DnsMembers("workers.test:8001", "127.0.0.1:9", timeout=0.3).resolve()


def test_the_gateway_validates_as_the_engine_with_respaced_lengths_remembered(model_dir: Path) -> None:
    from service.backends.triton.models import ServedModels
    from service.engine.errors import InvalidRequest

    models = ServedModels()
    models.add(model_dir)
    for _ in range(3):
        models.resolve(spec(steps=5))
    assert models._respaced.cache_info().hits == 2  # one schedule built for three requests
    bad = GenerationSpec("tiny", class_label=1, steps="ddim7x", num_images=1, seed=0)
    for _ in range(2):  # a refused respacing is refused every time, never remembered as valid
        with pytest.raises(InvalidRequest, match="steps"):
            models.resolve(bad)


def test_the_fleet_is_exposed_as_prometheus_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from service.api.metrics import BackendCollector
    from service.backends.base import FleetStats

    class Backend:
        ready = True

        def loads(self) -> list[object]:
            return []

        def memory_bytes(self) -> dict[str, int]:
            return {}

        def fleet(self) -> FleetStats:
            return FleetStats(
                {"live": 3, "unready": 0, "draining": 1}, {"stream": 1}, {"ok": 7}, {"joined": 4}, 2
            )

    registry = CollectorRegistry()
    registry.register(BackendCollector(Backend()))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    for line in (
        'ddpm_triton_workers{state="draining"} 1.0',
        'ddpm_triton_ejections_total{reason="stream"} 1.0',
        'ddpm_triton_resolves_total{outcome="ok"} 7.0',
        'ddpm_triton_membership_changes_total{change="joined"} 4.0',
        "ddpm_triton_resends_total 2.0",
    ):
        assert line in text, text
