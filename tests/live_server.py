"""A real uvicorn server in a thread of the test process, on a loopback socket bound here (no port race),
and the polling helpers the live-server tests share."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def serve_command() -> list[str]:
    """The `ddpm-serve` command of this environment."""
    script = Path(sys.executable).parent / "ddpm-serve"
    if script.exists():
        return [str(script)]
    found = shutil.which("ddpm-serve")
    return [found] if found else [sys.executable, "-m", "service.cli.serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def ddpm_serve(model_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `ddpm-serve` process on the CPU with one torch thread (plus `env`, DDPM_* names), once ready;
    killed on exit if it is still running."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {
        "DDPM_MODEL_DIRS": str(model_dir),
        "DDPM_DEVICE": "cpu",
        "DDPM_TORCH_THREADS": "1",
        "DDPM_WARMUP_ITERATIONS": "1",
        "DDPM_LOG_LEVEL": "warning",
        **env,
    }
    command = [*serve_command(), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        command, env={**os.environ, **settings}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: proc.poll() is not None or is_ready(base), what="ddpm-serve to be ready")
        assert proc.poll() is None, proc.communicate()[0].decode()
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
