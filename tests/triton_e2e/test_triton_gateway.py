"""The gateway over real tritonserver workers (model_store layout, decoupled Python-backend model).

Same images as the embedded engine for the same seed; a worker killed under load loses no request
(each ends with its image or an error, none past its deadline); 503 while no worker is live; the
gateway serves again once a worker is back.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.triton_worker.launcher import TritonProcess
from tests.triton_e2e.conftest import MODEL
from tests.triton_e2e.gateway import TIMEOUT, gateway_settings, is_ready, served, wait_for

pytestmark = pytest.mark.slow

REQUESTS = (
    {"class_label": 3, "steps": 5, "seed": 11, "num_images": 2},
    {"class_label": 0, "steps": 4, "seed": 5, "sampler": "ddim", "eta": 0.5},
)


def sse_events(text: str) -> list[tuple[str, str]]:
    events, event = [], ""
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event, line.removeprefix("data: ")))
    return events


def two_workers(start: Callable[..., TritonProcess], repo: Path) -> tuple[TritonProcess, TritonProcess, Any]:
    """Two live tritonserver workers and a gateway app over both (not started yet)."""
    a, b = start(), start()
    a.wait_ready()
    b.wait_ready()
    app = create_app(gateway_settings(repo / MODEL, backend="triton", triton_urls=[a.url, b.url]))
    return a, b, app


class Load:
    """n generate requests (K=150), each on its own thread; `outcomes[i]` is its response or error."""

    def __init__(self, http: httpx.Client, n: int, timeout_ms: int) -> None:
        self.outcomes: dict[int, Any] = {}
        self.timeout_ms = timeout_ms
        self.threads = [threading.Thread(target=self._send, args=(http, i)) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def _send(self, http: httpx.Client, i: int) -> None:
        body = {"class_label": i % 10, "steps": 150, "seed": i, "timeout_ms": self.timeout_ms}
        try:
            self.outcomes[i] = http.post("/generate", json=body, timeout=self.timeout_ms / 1000 + 10)
        except httpx.HTTPError as e:  # a hang past the deadline would end here
            self.outcomes[i] = e

    def join(self) -> dict[int, Any]:
        """Each request's status code (or error), once all have ended; fails if one hangs."""
        for thread in self.threads:
            thread.join(self.timeout_ms / 1000 + 15)
        assert not any(thread.is_alive() for thread in self.threads), "a request hung past its deadline"
        return {i: getattr(r, "status_code", repr(r)) for i, r in self.outcomes.items()}


def test_gateway_over_triton_matches_embedded(
    start_triton: Callable[..., TritonProcess], triton_repo: Path
) -> None:
    worker = start_triton()
    worker.wait_ready()
    model_dir = triton_repo / MODEL
    app = create_app(gateway_settings(model_dir, backend="triton", triton_urls=[worker.url]))
    with served(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        over_triton = [http.post("/generate", json=body) for body in REQUESTS]
        as_json = http.post("/generate", json={**REQUESTS[0], "response_format": "json"}).json()
        streamed = sse_events(http.post("/generate", json={**REQUESTS[0], "stream": True}).text)
        previewed = sse_events(
            http.post("/generate", json={**REQUESTS[0], "stream": True, "preview_every": 2}).text
        )
        # An error raised inside the worker (its deadline) comes back as that request's error.
        late = http.post("/generate", json={"class_label": 1, "steps": 1000, "timeout_ms": 300})
        metrics = http.get("/metrics").text

    for r in over_triton:
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded", late.text
    assert [e for e, _ in streamed].count("progress") >= 1 and streamed[-1][0] == "result"
    assert json.loads(streamed[-1][1])["images"] == as_json["images"]
    # Previews cross the wire too: K = 5, every 2 steps, two images -> steps 2 and 4 of each.
    previews = [json.loads(data) for event, data in previewed if event == "preview"]
    assert sorted((p["image"], p["step"]) for p in previews) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    assert all(Image.open(io.BytesIO(base64.b64decode(p["png"]))).size == (16, 16) for p in previews)
    assert json.loads(previewed[-1][1])["images"] == as_json["images"]
    # Per-image metrics are the gateway's, as when embedded (K = 4 and 5 fall in the bucket le_10): 2 + 1
    # images of REQUESTS, then 2 each as JSON, streamed and previewed.
    assert 'ddpm_queue_wait_seconds_count{k="le_10",model="tiny"} 9.0' in metrics
    expired = 'ddpm_requests_total{k="1000",model="tiny",sampler="ddpm",status="deadline_exceeded"} 1.0'
    assert expired in metrics

    with TestClient(create_app(gateway_settings(model_dir))) as embedded:
        wait_for(lambda: embedded.get("/readyz").status_code == 200, what="the embedded app")
        local = [embedded.post("/generate", json=body) for body in REQUESTS]
        local_json = embedded.post("/generate", json={**REQUESTS[0], "response_format": "json"}).json()
    assert [r.content for r in over_triton] == [r.content for r in local]
    assert as_json["images"] == local_json["images"]


def test_killed_worker_loses_no_request_and_the_gateway_recovers(
    start_triton: Callable[..., TritonProcess], triton_repo: Path
) -> None:
    a, b, app = two_workers(start_triton, triton_repo)
    backend = app.state.context.backend
    with served(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        wait_for(lambda: len(backend.router.serving(MODEL)) == 2, what="both workers live")
        load = Load(http, 8, timeout_ms=30_000)
        worker_b = backend.router.worker(b.url)
        wait_for(lambda: worker_b.outstanding >= 2, what="requests in flight on the worker to kill")
        b.kill()
        statuses = load.join()
        # Failover: the killed worker's requests were sent again to the live one, so all succeed.
        assert statuses == dict.fromkeys(range(8), 200), statuses

        a.kill()
        wait_for(lambda: not is_ready(base), timeout=15, what="readiness to drop with no live worker")
        refused = http.post("/generate", json={"class_label": 1, "steps": 2})
        assert refused.status_code == 503, refused.text
        assert "no Triton worker" in refused.json()["error"]["message"]
        assert refused.headers.get("retry-after")

        back = start_triton(grpc_port=a.grpc_port, http_port=a.http_port, metrics_port=a.metrics_port)
        back.wait_ready()
        wait_for(lambda: is_ready(base), timeout=30, what="the gateway to serve again")
        again = http.post("/generate", json={"class_label": 1, "steps": 2, "seed": 3})
        assert again.status_code == 200, again.text


def test_a_paused_worker_is_routed_around_and_back(
    start_triton: Callable[..., TritonProcess], triton_repo: Path
) -> None:
    """SIGSTOP on a worker under load: its requests end by their deadline at the latest (no hang), the
    health checks drop it and new requests go to the other worker; after SIGCONT it serves again."""
    a, b, app = two_workers(start_triton, triton_repo)
    backend = app.state.context.backend
    with served(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        wait_for(lambda: len(backend.router.serving(MODEL)) == 2, what="both workers live")
        load = Load(http, 6, timeout_ms=8_000)
        worker_b = backend.router.worker(b.url)
        wait_for(lambda: worker_b.outstanding >= 2, what="requests in flight on the worker to pause")
        assert b.process is not None
        b.process.send_signal(signal.SIGSTOP)
        try:
            statuses = load.join()
            assert set(statuses.values()) <= {200, 504} and sorted(statuses) == list(range(6)), statuses
            serving = lambda: {w.url for w in backend.router.serving(MODEL)}  # noqa: E731
            wait_for(lambda: b.url not in serving(), timeout=15, what="the paused worker to be dropped")
            body = {"class_label": 1, "steps": 5, "seed": 2, "timeout_ms": 20_000}
            routed = http.post("/generate", json=body)
            assert routed.status_code == 200, routed.text
        finally:
            b.process.send_signal(signal.SIGCONT)
        wait_for(lambda: len(backend.router.serving(MODEL)) == 2, timeout=30, what="the resumed worker back")
        again = http.post("/generate", json={"class_label": 1, "steps": 2, "seed": 3})
        assert again.status_code == 200, again.text
