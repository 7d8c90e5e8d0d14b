"""The gateway under test: a real uvicorn server in a thread of the test process, on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.api.settings import Settings

TIMEOUT = 60.0


def gateway_settings(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dirs": [model_dir],
        "device": "cpu",
        "max_batch": 4,
        "max_queue": 32,
        "max_num_images": 4,
        "warmup_iterations": 1,
        "torch_threads": 1,
        "drain_timeout_s": 5.0,
    }
    return Settings(**{**values, **overrides})


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def is_ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def served(app: FastAPI, ready: bool = True) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        if ready:
            wait_for(lambda: is_ready(base), what="the gateway to be ready")
        else:
            wait_for(lambda: server.started, what="the gateway to start")
        yield base
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def gateway(settings: Settings) -> FastAPI:
    return create_app(settings)
