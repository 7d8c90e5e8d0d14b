"""A real uvicorn server in a thread of the test process, on a loopback socket bound here (no port race),
and the polling helpers the live-server tests share."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

TIMEOUT = 60.0


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
    """The app's base URL, once /readyz answers 200 (or, with ready=False, once uvicorn has started)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        if ready:
            wait_for(lambda: is_ready(base), what="the server to be ready")
        else:
            wait_for(lambda: server.started, what="the server to start")
        yield base
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
