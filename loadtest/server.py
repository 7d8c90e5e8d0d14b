"""Start and stop a real `ddpm-serve` process on loopback, and read its /metrics and RSS.

A separate process, as in production: the server's event loop, engine thread and GIL are not shared with
the load generator. It is stopped by its own PID (SIGTERM, then SIGKILL if it does not drain in time).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
STOP_WAIT_S = 40.0  # drain (at most the server's drain timeout, 30 s by default) plus exit
COMPILED_SIZES = 11  # a default server's batch sizes (1..6, 8, 10, 12, 14, 16) at DDPM_MAX_BATCH=16
COMPILE_WAIT_S = 1800.0  # a cold package cache on a 2-core CPU: about 40 s per batch size


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    max_batch: int = 16
    max_queue: int = 256
    run_to_completion: bool = False
    max_num_images: int = 16  # capped at max_queue: the server refuses a queue shorter than one request
    # None: the server's defaults (threads measured per batch size, compile as the server decides); a
    # number pins the intra-op threads (and the OpenMP/MKL pools) as a user could.
    torch_threads: int | None = None
    compile: bool | None = None  # None: the server's default
    compile_cache_dir: Path | None = None  # None: the server's default folder
    warmup_iterations: int = 2
    drain_timeout_s: float = 30.0
    triton_urls: tuple[str, ...] = ()  # non-empty: the gateway serves through these Triton workers

    def env(self) -> dict[str, str]:
        # DDPM_* from the caller's shell are dropped: a stray DDPM_MAX_BATCH would change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
        env.update(
            DDPM_DEVICE="cpu",
            DDPM_MAX_BATCH=str(self.max_batch),
            DDPM_MAX_QUEUE=str(self.max_queue),
            DDPM_MAX_NUM_IMAGES=str(min(self.max_num_images, self.max_queue)),
            DDPM_RUN_TO_COMPLETION="true" if self.run_to_completion else "false",
            DDPM_WARMUP_ITERATIONS=str(self.warmup_iterations),
            DDPM_DRAIN_TIMEOUT_S=str(self.drain_timeout_s),
            DDPM_MAX_TIMEOUT_MS="600000",
            DDPM_LOG_LEVEL="warning",
        )
        if self.torch_threads is not None:
            # Also caps OpenMP/MKL pools that torch.set_num_threads does not reach.
            threads = str(self.torch_threads)
            env.update(DDPM_TORCH_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if self.compile is not None:
            env.update(DDPM_COMPILE="true" if self.compile else "false")
        if self.compile_cache_dir is not None:
            env.update(DDPM_COMPILE_CACHE_DIR=str(self.compile_cache_dir))
        if self.triton_urls:
            env.update(DDPM_BACKEND="triton", DDPM_TRITON_URLS=",".join(self.triton_urls))
        return env

    def describe(self) -> str:
        mode = "run-to-completion" if self.run_to_completion else "continuous"
        if self.triton_urls:
            return f"gateway with DDPM_BACKEND=triton over {len(self.triton_urls)} worker(s)"
        return (
            f"DDPM_MAX_BATCH={self.max_batch}, DDPM_MAX_QUEUE={self.max_queue}, {mode}, "
            f"DDPM_TORCH_THREADS={self.torch_threads or 'default'}, "
            f"DDPM_COMPILE={'default' if self.compile is None else self.compile}, device cpu"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    script = Path(sys.executable).parent / "ddpm-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli.serve"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """Prometheus samples summed over labels other than the ones asked for."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v for sample_labels, v in self.samples.get(name, []) if labels.items() <= sample_labels.items()
        )


def parse_metrics(text: str) -> MetricsSnapshot:
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return MetricsSnapshot(dict(samples))


class Server:
    """`with Server(config) as server:` starts ddpm-serve, waits for /readyz, and stops it by PID."""

    def __init__(self, config: ServerConfig, ready_timeout_s: float = 180.0) -> None:
        self.config = config
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="ddpm-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not started"
        return self.proc.pid

    def start(self) -> None:
        command = [*serve_command(), "--host", HOST, "--port", str(self.port), "--model"]
        command.append(str(self.config.model_dir))
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                command, env=self.config.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ddpm-serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ddpm-serve not ready in {self.ready_timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL past STOP_WAIT_S; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def metrics(self) -> MetricsSnapshot:
        return parse_metrics(httpx.get(f"{self.base_url}/metrics", timeout=10.0, trust_env=False).text)

    async def metrics_async(self, client: httpx.AsyncClient) -> MetricsSnapshot:
        return parse_metrics((await client.get(f"{self.base_url}/metrics", timeout=10.0)).text)

    def wait_compiled(self, sizes: int = COMPILED_SIZES, timeout_s: float = COMPILE_WAIT_S) -> float:
        """Seconds until the server serves `sizes` batch sizes compiled (0 when all were cached).

        A benchmark of the steady state calls it first: with a cold cache a fresh server serves eager
        while it compiles in the background, and the compile shares the cores with the load."""
        start = time.perf_counter()
        while self.metrics().value("ddpm_compiled_batch_sizes") < sizes:
            if time.perf_counter() - start > timeout_s:
                raise RuntimeError(f"the server did not compile its {sizes} batch sizes in {timeout_s:.0f} s")
            time.sleep(2.0)
        return time.perf_counter() - start

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS), not the peak that /metrics reports on the CPU."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for PID {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (/proc/PID/stat), to see how many cores it used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:  # not ready, or interrupted while waiting: no server is left behind
            self.stop()
            self.log_path.unlink(missing_ok=True)  # its tail is in the error already
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)
