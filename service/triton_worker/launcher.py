"""Start a real tritonserver (the binary in the nvidia-pytriton wheel) on a model repository.

The recipe is shared/notes/triton.md's: a backend directory whose python/ holds the backend library, its
utilities and a *symbolic link* to the stub for this Python (the stub finds its bundled CUDA runtime
relative to its real path); this interpreter's libdir first on LD_LIBRARY_PATH (else the stub loads the
system's libpython) and the virtual environment's bin/ first on PATH (so the stub imports this venv's
packages, ddpm-serve included).

Used by the real-server tests (tests/triton_e2e), by the gateway-over-Triton benchmark
(loadtest.triton_bench) and for local development (`python -m service.triton_worker.launcher`). In
NVIDIA's Triton container none of this is needed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT = 90.0


def pytriton_root() -> Path | None:
    """<site-packages>/pytriton/tritonserver, or None when the wheel (or its server) is absent."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def missing_reason() -> str | None:
    """Why a real Triton test cannot run here (None: it can)."""
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return "tritonclient[grpc] is not installed (pip install -e '.[triton,tritonserver]')"
    root = pytriton_root()
    if root is None:
        return "no tritonserver binary: the nvidia-pytriton wheel is not installed (extra 'tritonserver')"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"the nvidia-pytriton wheel has no Python backend stub for Python {version}"
    return None


def backend_dir(root: Path, where: Path) -> Path:
    python = where / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        target = python / name
        if not target.exists():
            target.symlink_to(root / "backends" / "python" / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = python / "triton_python_backend_stub"
    if not stub.exists():
        stub.symlink_to(root / "python_backend_stubs" / version / "triton_python_backend_stub")
    return where / "backends"


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with this interpreter's libdir first on LD_LIBRARY_PATH and its bin/ first on PATH.

    Nothing else: no thread settings (a worker measures its intra-op threads per batch size, as the
    embedded server does; a pinned OMP_NUM_THREADS=1 / DDPM_TORCH_THREADS=1 ran its network on one core),
    and the DDPM_* variables pass through to the worker, which reads them as the gateway does."""
    env = dict(environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TritonProcess:
    repository: Path
    models: list[str]
    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"  # the address every port binds (a fleet on loopback uses 127.0.0.2, ...)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"tritonserver-{self.grpc_port}.log"

    def start(self) -> None:
        root = pytriton_root()
        if root is None:
            raise RuntimeError(missing_reason() or "no tritonserver binary")
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir(root, self.workdir)}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models),
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
        ]
        log = self.log_path.open("ab")
        # Its own session: a kill reaches the server and its stub processes, nothing else.
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(os.environ),
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(self._failure("exited"))
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        return
                except Exception:  # not listening yet: keep polling until the deadline
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(self._failure("was not ready in time"))
                time.sleep(0.2)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and its stubs: a worker dying, not shutting down."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def _failure(self, what: str) -> str:
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        return f"tritonserver on {self.url} {what}; log tail:\n{tail}"


def main() -> None:
    """Run one tritonserver on a model repository until Ctrl-C (local development and load tests)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Start a real tritonserver on a model repository")
    parser.add_argument("--repository", type=Path, default=Path("model_store"))
    parser.add_argument("--model", action="append", required=True, help="model folder to load (repeatable)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8002)
    parser.add_argument("--metrics-port", type=int, default=8003)
    args = parser.parse_args()
    reason = missing_reason()
    if reason is not None:
        parser.error(reason)
    missing = [m for m in args.model if not (args.repository / m / "config.pbtxt").is_file()]
    if missing:
        parser.error(f"no config.pbtxt for {', '.join(missing)} under {args.repository}")
    workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
    server = TritonProcess(
        args.repository.resolve(), args.model, workdir, args.grpc_port, args.http_port, args.metrics_port
    )
    # SIGTERM (and Ctrl-C) stop the server and its stubs through the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.start()
    try:
        server.wait_ready()
        # A command line prints by design (as service/cli does).
        print(f"tritonserver ready: gRPC {server.url}, metrics :{args.metrics_port}; log {server.log_path}")  # noqa: T201
        print(f"gateway: DDPM_BACKEND=triton DDPM_TRITON_URLS={server.url} ddpm-serve")  # noqa: T201
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
