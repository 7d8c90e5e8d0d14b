"""A real HTTP server: client disconnects cancel work; `ddpm-serve` starts, serves and stops cleanly."""

from __future__ import annotations

import http.client
import io
import re
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from service.api.app import create_app
from tests.api.helpers import ModelDirs, make_settings
from tests.live_server import TIMEOUT, ddpm_serve, served, wait_for

LONG = {"class_label": 1, "steps": 1000}  # ~15 s on the tiny model: far longer than any wait below


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def test_client_disconnect_cancels_its_rows(model_dirs: ModelDirs) -> None:
    app = create_app(make_settings(model_dirs))
    with served(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        pool = app.state.context.backend.pool("tiny")

        def idle() -> bool:
            load = pool.loads()["cpu"]
            return load.in_flight == 0 and load.queue_depth == 0

        # Streaming: read the first progress event, then hang up.
        with http.stream("POST", "/generate", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line.startswith("event: progress"))
        wait_for(idle, timeout=10, what="the streamed rows to be cancelled")

        # Plain request: the client gives up after half a second.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/generate", json=LONG, timeout=0.5)
        wait_for(idle, timeout=10, what="the plain request's rows to be cancelled")

        text = http.get("/metrics").text
        assert metric(text, "ddpm_images_total", model="tiny", k="1000", status="cancelled") == 2
        assert metric(text, "ddpm_requests_total", model="tiny", k="1000", status="cancelled") == 2
        # The server is unharmed.
        assert http.post("/generate", json={"class_label": 1, "steps": 2}).status_code == 200


@pytest.mark.slow
def test_ddpm_serve_serves_then_drains_on_sigterm(model_dirs: ModelDirs) -> None:
    with ddpm_serve(model_dirs.calibrated, DDPM_MAX_BATCH="2") as (proc, base):
        r = httpx.post(f"{base}/generate", json={"class_label": 3, "steps": 5, "seed": 1}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (16, 16)

        # SIGTERM while a request is in flight: it still completes, then the process exits cleanly.
        outcome: dict[str, Any] = {}
        body = {"class_label": 3, "steps": 120}
        worker = threading.Thread(
            target=lambda: outcome.update(r=httpx.post(f"{base}/generate", json=body, timeout=TIMEOUT))
        )
        worker.start()
        in_flight = lambda: metric(httpx.get(f"{base}/metrics").text, "ddpm_in_flight_rows") > 0  # noqa: E731
        wait_for(in_flight, what="the request to be in flight")
        proc.send_signal(signal.SIGTERM)
        worker.join(TIMEOUT)
        assert outcome["r"].status_code == 200 and outcome["r"].headers["x-steps"] == "120"
        assert proc.wait(TIMEOUT) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", timeout=2)


@pytest.mark.slow
def test_an_idle_connection_stays_open_for_the_keep_alive_setting_then_the_server_closes_it(
    model_dirs: ModelDirs,
) -> None:
    with ddpm_serve(model_dirs.calibrated, DDPM_KEEP_ALIVE_S="2") as (_, base):
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=TIMEOUT)
        first: object = None
        for idle_s in (0.0, 1.0):  # reused within the setting: answered on the same connection
            time.sleep(idle_s)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            first = first or conn.sock
            assert conn.sock is first  # http.client would have reconnected had the server closed it
        assert conn.sock is not None
        idle_since = time.monotonic()
        assert conn.sock.recv(1) == b""  # blocks until the server closes the idle connection
        assert 1.5 < time.monotonic() - idle_since < 4  # uvicorn alone would wait 5 s
        conn.close()
