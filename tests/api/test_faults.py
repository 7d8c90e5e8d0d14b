"""Fault injection against real servers (issue: reliability campaign), each with its outcome asserted:
SIGTERM while the queue is full, and a streaming client that stops reading."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from tests.api.helpers import ModelDirs, make_settings
from tests.api.test_api_server import metric
from tests.live_server import TIMEOUT, ddpm_serve, served, wait_for

pytestmark = pytest.mark.slow


def test_sigterm_under_load_gives_every_request_its_result(model_dirs: ModelDirs) -> None:
    """Two slots, eight requests in flight or queued (plain and streamed) when SIGTERM arrives: uvicorn
    stops accepting, the engine drains, and each of the eight ends with its image; the process exits 0."""
    outcomes: dict[int, Any] = {}

    def send(base: str, i: int) -> None:
        body = {"class_label": i % 10, "steps": 40, "seed": i, "stream": i % 2 == 1}
        try:
            r = httpx.post(f"{base}/generate", json=body, timeout=TIMEOUT * 2)
            outcomes[i] = (r.status_code, r.text if body["stream"] else r.headers.get("x-steps"))
        except httpx.HTTPError as e:
            outcomes[i] = ("error", type(e).__name__)

    settings = {"DDPM_MAX_BATCH": "2", "DDPM_DRAIN_TIMEOUT_S": "60"}
    with ddpm_serve(model_dirs.calibrated, **settings) as (proc, base):
        workers = [threading.Thread(target=send, args=(base, i)) for i in range(8)]
        for worker in workers:
            worker.start()
        depth = lambda: metric(httpx.get(f"{base}/metrics").text, "ddpm_queue_depth")  # noqa: E731
        wait_for(lambda: depth() >= 4, what="a queue behind the two slots")
        proc.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.join(TIMEOUT * 2)
        assert proc.wait(TIMEOUT) == 0
    assert sorted(outcomes) == list(range(8))
    for i, (status, detail) in outcomes.items():
        assert status == 200, (i, status, detail)
        assert detail == "40" if i % 2 == 0 else "event: result" in detail, (i, detail)


def test_a_stream_that_stops_reading_frees_its_rows_at_the_deadline(model_dirs: ModelDirs) -> None:
    """The client opens a stream and never reads it: the server keeps serving others, and at the
    request's deadline its rows leave their slots (the engine, not the socket, decides)."""
    settings = make_settings(model_dirs, max_batch=2)
    with served(create_app(settings)) as base, httpx.Client(timeout=TIMEOUT) as client:
        body = {"class_label": 1, "steps": 1000, "stream": True, "timeout_ms": 3000}
        with client.stream("POST", f"{base}/generate", json=body) as stalled:
            assert stalled.status_code == 200  # headers read; the body never is
            started = time.monotonic()
            in_flight = lambda: metric(httpx.get(f"{base}/metrics").text, "ddpm_in_flight_rows")  # noqa: E731
            wait_for(lambda: in_flight() >= 1, what="the stalled stream's row in a slot")
            other = httpx.post(f"{base}/generate", json={"class_label": 2, "steps": 5}, timeout=TIMEOUT)
            assert other.status_code == 200  # served beside it
            wait_for(lambda: in_flight() == 0, timeout=TIMEOUT, what="the row to leave at its deadline")
            assert time.monotonic() - started < 3 + TIMEOUT / 2
            text = httpx.get(f"{base}/metrics").text
            assert metric(text, "ddpm_images_total", status="deadline_exceeded") >= 1
