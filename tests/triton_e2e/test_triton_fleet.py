"""A fleet on loopback, as Kubernetes would run it: four real tritonserver workers on 127.0.0.2-.5 (same
ports, told apart by address as pods are), a real DNS server on loopback standing in for the headless
Service, whose answers change while mixed-K load runs through a real gateway (DDPM_TRITON_DNS).

One scenario, in order: a worker added to DNS gets traffic within one re-resolve period; four equal
workers share the steps evenly; a worker removed from DNS and then sent SIGTERM loses nothing; a worker
sent SIGKILL costs at most one re-send per affected request; every request gets exactly one answer.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.triton_worker.launcher import TritonProcess
from tests.triton_e2e.conftest import MODEL
from tests.triton_e2e.gateway import TIMEOUT, gateway_settings, served, wait_for

pytestmark = pytest.mark.slow

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
NAME = "workers.fleet.test"
RESOLVE_INTERVAL_S = 1.0
STEPS = (4, 8, 16)  # mixed K (the tiny model: a step is a few ms)
CLIENTS = 12
BALANCE_WINDOW_S = 25.0
MAX_SHARE_RATIO = 1.15
HEALTH_CHECK_S = 1.0  # a loaded 2-core machine: server live + model ready + opening the stream


class Dns:
    """A real DNS server (dnslib) on 127.0.0.1 answering A records for NAME from a set tests change."""

    def __init__(self) -> None:
        server_module = pytest.importorskip("dnslib.server")
        from dnslib import QTYPE, RR, A

        self.addresses: set[str] = set()
        dns = self

        class Resolver:
            def resolve(self, request: Any, handler: Any) -> Any:
                reply = request.reply()
                if str(request.q.qname).rstrip(".") != NAME:
                    reply.header.rcode = 3  # NXDOMAIN
                elif request.q.qtype == QTYPE.A:
                    for address in sorted(dns.addresses):
                        reply.add_answer(RR(NAME, QTYPE.A, rdata=A(address), ttl=1))
                return reply

        self.server = server_module.DNSServer(Resolver(), port=0, address="127.0.0.1")
        self.server.start_thread()
        self.nameserver = f"127.0.0.1:{self.server.server.server_address[1]}"

    def stop(self) -> None:
        self.server.stop()


class ClosedLoop:
    """CLIENTS threads, each sending one mixed-K request after another until stopped; every request's
    answer (status code, or the transport error) is recorded once."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[int, int | str]] = []  # (request number, status or error)
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self, client: int) -> None:
        rng = random.Random(client)
        with httpx.Client(base_url=self.base, timeout=TIMEOUT) as http:
            while not self._stop.is_set():
                with self._lock:
                    number, self.sent = self.sent, self.sent + 1
                body = {"class_label": number % 10, "steps": rng.choice(STEPS), "seed": number}
                try:
                    answer: int | str = http.post(
                        "/generate", json={**body, "timeout_ms": 60_000}
                    ).status_code
                except httpx.HTTPError as e:
                    answer = f"{type(e).__name__}: {e}"
                with self._lock:
                    self.answers.append((number, answer))

    def stop(self) -> list[tuple[int, int | str]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._threads), "a request hung"
        return self.answers


def common_port() -> int:
    """A port free on every worker address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in HOSTS[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on every loopback address")


def steps_served(worker: TritonProcess) -> float:
    """The worker's own count of UNet row evaluations (one per image per step), from its metrics port."""
    text = httpx.get(f"http://{worker.host}:{worker.metrics_port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^ddpm_unet_evaluations_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.fixture()
def fleet(start_triton: Callable[..., TritonProcess]) -> Iterator[dict[str, TritonProcess]]:
    try:
        socket.socket().bind((HOSTS[-1], 0))
    except OSError:
        pytest.skip("the loopback range 127.0.0.0/8 is not routed to lo here")
    grpc, http, metrics = common_port(), common_port(), common_port()
    workers = {
        host: start_triton(host=host, grpc_port=grpc, http_port=http, metrics_port=metrics) for host in HOSTS
    }
    for worker in workers.values():
        worker.wait_ready()
    yield workers


def test_a_fleet_follows_dns_under_load(fleet: dict[str, TritonProcess], triton_repo: Path) -> None:
    dns = Dns()
    dns.addresses = set(HOSTS[:3])
    port = next(iter(fleet.values())).grpc_port
    settings = gateway_settings(
        triton_repo / MODEL,
        backend="triton",
        triton_dns=f"{NAME}:{port}",
        triton_nameserver=dns.nameserver,
        triton_resolve_interval_s=RESOLVE_INTERVAL_S,
        max_queue=64,
    )
    app = create_app(settings)
    backend = app.state.context.backend
    try:
        with served(app) as base:
            load = ClosedLoop(base)
            wait_for(lambda: len(load.answers) >= 30, what="load to flow over three workers")

            # Scale-up: the fourth worker (ready already) gets work within one re-resolve period, plus
            # the health check that must pass first.
            newcomer = fleet[HOSTS[3]]
            dns.addresses.add(HOSTS[3])
            added = time.monotonic()
            sent = lambda: getattr(backend.router.find(newcomer.url), "sent", 0)  # noqa: E731
            wait_for(lambda: sent() > 0, timeout=10, what="a request sent to the new worker")
            first_traffic = time.monotonic() - added
            assert first_traffic <= RESOLVE_INTERVAL_S + HEALTH_CHECK_S, first_traffic
            before = steps_served(newcomer)
            wait_for(lambda: steps_served(newcomer) > before, timeout=10, what="steps on the new worker")

            # Balance: four equal workers share the steps.
            start = {h: steps_served(w) for h, w in fleet.items()}
            time.sleep(BALANCE_WINDOW_S)
            shares = {h: steps_served(w) - start[h] for h, w in fleet.items()}
            ratio = max(shares.values()) / max(min(shares.values()), 1.0)
            assert ratio <= MAX_SHARE_RATIO, shares

            # Scale-down: out of DNS, drained, then SIGTERM: nothing lost, nothing re-sent.
            resends = backend.fleet().resends
            leaving = fleet[HOSTS[0]]
            dns.addresses.discard(HOSTS[0])
            gone = lambda: backend.router.find(leaving.url) is None  # noqa: E731
            wait_for(gone, timeout=3 * RESOLVE_INTERVAL_S + 30, what="the removed worker to drain")
            leaving.stop()
            assert backend.fleet().resends == resends

            # A crash: SIGKILL under load; each affected request is sent again at most once.
            victim = fleet[HOSTS[1]]
            state = backend.router.find(victim.url)
            assert state is not None
            wait_for(lambda: state.outstanding >= 2, what="requests in flight on the worker to kill")
            at_ejection: list[int] = []  # requests on it when the gateway ejected it (load goes on meanwhile)
            eject = backend.drop

            def counting_drop(worker: Any, reason: str, kind: str = "health") -> None:
                if worker is state and not at_ejection:
                    at_ejection.append(worker.outstanding)
                eject(worker, reason, kind)

            backend.drop = counting_drop  # type: ignore[method-assign]
            victim.kill()
            wait_for(lambda: not state.live, timeout=10, what="the killed worker to be ejected")
            affected = at_ejection[0]
            time.sleep(2.0)  # its requests finish elsewhere under continuing load
            answers = load.stop()
            resent = backend.fleet().resends - resends
            assert 0 < resent <= affected, (resent, affected)
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        dns.stop()

    # Every request got exactly one answer, and every answer is an image.
    numbers = [number for number, _ in answers]
    assert sorted(numbers) == list(range(len(numbers))) and len(numbers) == load.sent
    failed = [(n, a) for n, a in answers if a != 200]
    assert not failed, failed
    assert 'ddpm_triton_membership_changes_total{change="joined"} 4.0' in metrics
    assert 'ddpm_triton_membership_changes_total{change="left"} 1.0' in metrics
    # One ejection, the killed worker's: the drained one left cleanly, and re-opening a stream never
    # reads as that stream failing.
    ejections = re.findall(r"^ddpm_triton_ejections_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert sum(float(e) for e in ejections) == 1.0, ejections
    print(  # the fleet's numbers, for docs/scaling.md
        f"\nfleet: {len(answers)} requests, all 200; first traffic on the added worker after "
        f"{first_traffic:.2f} s; steps per worker {shares} (max/min {ratio:.3f}); "
        f"SIGKILL: {affected} affected, {resent} re-sent"
    )
