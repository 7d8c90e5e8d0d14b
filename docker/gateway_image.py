"""Build docker/Dockerfile.gateway with podman on a Debian base made here, run the image, and check it.

Registry images (python, prometheus) cannot be pulled on machines without a registry mirror, so the base is
Debian bookworm made by debootstrap (its Python is 3.11, as in python:3.11-slim-bookworm) and imported into
podman; it goes in as the Dockerfile's PYTHON_IMAGE build argument. pip inside the build reaches the package
registry through this machine's trust store and takes the CPU torch wheel from this machine's wheel folder,
both mounted read-only into the build and named by the PIP_* build arguments. The Dockerfile is the one
users build with Docker against the public images: nothing here edits it.

The checks (each a function the container test calls; `main` runs them all and prints a report):
  - /readyz turns ready and POST /generate answers a PNG;
  - the server runs as the image's non-root user;
  - the image's HEALTHCHECK command succeeds inside the container;
  - Prometheus, Debian's binary in a container on the same base, scrapes the gateway with
    docker/prometheus.yml (its service names mapped to loopback) and every dashboard query returns data;
  - SIGTERM drains: a request in flight gets its image, then the server exits 0.

    python docker/gateway_image.py [--keep]     # as root, with podman and debootstrap installed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from service.triton_worker.launcher import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.gateway"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus.yml"
CONTAINERS_CONF = ROOT / "docker" / "podman" / "containers.conf"

BASE_IMAGE = "localhost/ddpm-serve/debian-python:3.11-bookworm"
GATEWAY_IMAGE = "localhost/ddpm-serve/gateway:local"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What python:3.11-slim-bookworm gives the Dockerfile: `python`, venv (with ensurepip), useradd (passwd is
# in minbase).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")

# The host's trust store (pip's registry connection is verified against it here) and its local wheels.
HOST_CA = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
HOST_WHEELS = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels"))
PROMETHEUS_BINARY = Path("/usr/bin/prometheus")

GATEWAY_PORT = 8000  # docker/prometheus.yml scrapes gateway:8000
READY_TIMEOUT_S = 240.0
# Two slots, so that the sample traffic's four-image request is degraded (a dashboard panel counts those).
SAMPLE_TRAFFIC_ENV = ("DDPM_MAX_BATCH=2",)
SAMPLE_TRAFFIC_K = (10, 25)  # calibrated points of the bundled model (model_store/fmnist-small)


class ContainerError(RuntimeError):
    """A podman step failed; the message has the command and what it printed."""


def podman_run(
    *args: str, timeout: float = 1800, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """podman with this folder's containers.conf, its output captured."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], input=stdin, capture_output=True, env=env, timeout=timeout)


def podman(*args: str, timeout: float = 1800, stdin: bytes | None = None) -> str:
    """podman_run that raises ContainerError, with podman's own message, unless it succeeds."""
    done = podman_run(*args, timeout=timeout, stdin=stdin)
    command = ["podman", *args]
    if done.returncode != 0:
        raise ContainerError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode(errors='replace')[-4000:]}"
        )
    return done.stdout.decode(errors="replace")


def unusable_reason() -> str | None:
    """Why podman cannot build and run containers here, or None when it can."""
    for tool in ("podman", "debootstrap", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman debootstrap)"
    if os.geteuid() != 0:
        return "the checks run podman as root (debootstrap and --network host builds need it)"
    try:
        podman("info", timeout=60)
    except (ContainerError, subprocess.TimeoutExpired) as error:
        return f"podman cannot run here: {error}"
    return None


def image_exists(tag: str) -> bool:
    return podman_run("image", "exists", tag).returncode == 0


def make_base(tag: str = BASE_IMAGE) -> float:
    """debootstrap a minimal bookworm with Python 3.11 and import it as `tag` (kept: made once a machine).
    Returns the seconds it took (0 when the image was there)."""
    if image_exists(tag):
        return 0.0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ddpm-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        include = ",".join(BASE_PACKAGES)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(rootfs), MIRROR],
            check=True,
            capture_output=True,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        archive = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True)
        podman("import", "--change", 'CMD ["/bin/bash"]', "-", tag, stdin=archive.stdout)
    return time.monotonic() - start


@dataclass(frozen=True)
class Build:
    seconds: float
    size_bytes: int


def build_args() -> list[str]:
    """Build arguments and read-only mounts that point the Dockerfile's pip at this machine's sources."""
    args = ["--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    # PyPI's index (reachable here) instead of download.pytorch.org (not); the local CPU wheel,
    # torch-2.13.0+cpu, ranks above PyPI's 2.13.0 for `torch==2.13.0`, so no CUDA build is fetched.
    args += ["--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple"]
    if HOST_CA.is_file():
        args += ["--volume", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    if HOST_WHEELS.is_dir():
        args += ["--volume", f"{HOST_WHEELS}:/run/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/run/wheels"]
    return args


def build_gateway(tag: str = GATEWAY_IMAGE) -> Build:
    """`podman build` of docker/Dockerfile.gateway from the repository root, in Docker's image format (the
    OCI format has no HEALTHCHECK)."""
    start = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", "--file", str(DOCKERFILE), "--tag", tag,
        *build_args(), str(ROOT),
    )  # fmt: skip
    seconds = time.monotonic() - start
    # The image a previous run left (gigabytes of layers) lost its tag to this one: drop it now.
    podman("image", "prune", "--force")
    size = json.loads(podman("image", "inspect", tag))[0]["Size"]
    return Build(seconds, int(size))


def context_bytes(ignore: bool) -> int:
    """Bytes of the build context podman sends for this repository, with or without .dockerignore: a
    throwaway build copies the whole context and measures it."""
    with tempfile.TemporaryDirectory(prefix="ddpm-context-") as scratch:
        containerfile = Path(scratch) / "Containerfile"
        containerfile.write_text(f"FROM {BASE_IMAGE}\nCOPY . /context\nRUN du -sb /context\n")
        args = ["build", "--no-cache", "--network", "host", "--file", str(containerfile)]
        if not ignore:
            # An ignore file that matches nothing (podman falls back to .dockerignore for an empty one).
            nothing = Path(scratch) / "nothing.dockerignore"
            nothing.write_text("no-such-path-in-this-repository\n")
            args += ["--ignorefile", str(nothing)]
        out = podman(*args, "--tag", "localhost/ddpm-serve/context:probe", str(ROOT))
        podman("rmi", "localhost/ddpm-serve/context:probe")
    sizes = [line.split()[0] for line in out.splitlines() if line.rstrip().endswith("/context")]
    return int(sizes[-1])


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        try:
            done = podman_run("logs", self.name, timeout=30)
            return (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        except subprocess.TimeoutExpired:
            return "(podman logs timed out)"

    def remove(self) -> None:
        podman_run("rm", "--force", "--time", "5", self.name)


def run_gateway(
    tag: str = GATEWAY_IMAGE, name: str = "ddpm-gateway-check", env: Sequence[str] = ()
) -> Container:
    """Start the image on the host network (the port docker/prometheus.yml scrapes) and wait for /readyz."""
    container = Container(name, f"http://127.0.0.1:{GATEWAY_PORT}")
    container.remove()
    if port_taken(GATEWAY_PORT):
        raise ContainerError(f"port {GATEWAY_PORT} is in use: the gateway container needs it")
    settings = [arg for item in env for arg in ("--env", item)]
    # --health-interval=disable: no systemd timer (none here); the check runs on demand (healthcheck run).
    podman(
        "run", "--detach", "--name", name, "--network", "host", "--health-interval", "disable", *settings, tag
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{container.url}/readyz", timeout=2).status_code == 200:
                return container
        except httpx.TransportError:
            pass
        state = json.loads(podman("inspect", name))[0]["State"]
        if not state["Running"]:
            raise ContainerError(f"the gateway exited ({state['ExitCode']}):\n{container.logs()}")
        time.sleep(1)
    raise ContainerError(f"/readyz not ready after {READY_TIMEOUT_S:.0f} s:\n{container.logs()}")


def port_taken(port: int) -> bool:
    """Something listens on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def server_uid(container: Container) -> int:
    """The real uid of the container's main process (PID 1: the Dockerfile's exec-form CMD)."""
    status = podman("exec", container.name, "cat", "/proc/1/status")
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(uid_line.split()[1])


def healthcheck(container: Container) -> str:
    """Run the image's HEALTHCHECK command in the container; podman prints nothing on success, else
    'unhealthy' and exits non-zero (raised as ContainerError)."""
    return podman("healthcheck", "run", container.name, timeout=60).strip()


def prometheus_queries(queries: Sequence[str], wait_s: float = 60.0) -> dict[str, list[object]]:
    """Run Debian's prometheus in a container on the local base with docker/prometheus.yml, the compose
    service names resolving to loopback (the gateway is on the host network), until it has scraped the
    gateway three times; then answer every query. Returns each query's result list."""
    name = "ddpm-prometheus-check"
    port = free_port()
    podman_run("rm", "--force", name)
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--add-host", "gateway:127.0.0.1", "--add-host", "triton:127.0.0.1",
        "--volume", f"{PROMETHEUS_BINARY}:/usr/bin/prometheus:ro",
        "--volume", f"{PROMETHEUS_CONFIG}:/etc/prometheus/prometheus.yml:ro",
        BASE_IMAGE, "/usr/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/tmp/prometheus", f"--web.listen-address=127.0.0.1:{port}",
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if time.monotonic() > deadline:
                raise ContainerError(f"Prometheus did not scrape the gateway 3 times in {wait_s:.0f} s")
            try:
                scrapes = {"query": 'count_over_time(up{job="gateway"}[5m]) >= 3'}
                if httpx.get(api, params=scrapes, timeout=2).json()["data"]["result"]:
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(1)
        results: dict[str, list[object]] = {}
        for query in queries:
            answer = httpx.get(api, params={"query": query}, timeout=10).json()
            if answer["status"] != "success":
                raise ContainerError(f"query failed: {query}: {answer}")
            results[query] = answer["data"]["result"]
        return results
    finally:
        podman_run("rm", "--force", "--time", "5", name)


@dataclass
class Drain:
    status_code: int
    png: bool
    exit_code: int
    seconds_to_exit: float
    refused_after_term: bool
    errors: list[str] = field(default_factory=list)


def sigterm_drain(container: Container, body: dict[str, object]) -> Drain:
    """Send `body` (a request taking a few seconds), SIGTERM the container while it runs, and report what
    the request got and how the server ended."""
    answer: dict[str, httpx.Response] = {}
    errors: list[str] = []

    def send() -> None:
        try:
            answer["response"] = httpx.post(f"{container.url}/generate", json=body, timeout=120)
        except httpx.HTTPError as error:
            errors.append(repr(error))

    sender = threading.Thread(target=send)
    sender.start()
    # In flight: its rows hold slots in the engine.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not in_flight(container.url):
        time.sleep(0.05)
    signalled = time.monotonic()
    podman("kill", "--signal", "TERM", container.name)
    time.sleep(0.3)
    try:
        late = httpx.post(f"{container.url}/generate", json=body, timeout=10)
        refused = late.status_code == 503
    except httpx.TransportError:
        refused = True
    sender.join(timeout=150)
    exit_code = int(podman("wait", container.name, timeout=120).strip())
    seconds = time.monotonic() - signalled
    response = answer.get("response")
    return Drain(
        status_code=response.status_code if response is not None else 0,
        png=response is not None and response.content[:8] == b"\x89PNG\r\n\x1a\n",
        exit_code=exit_code,
        seconds_to_exit=seconds,
        refused_after_term=refused,
        errors=errors,
    )


def in_flight(url: str) -> bool:
    try:
        metrics = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.TransportError:
        return False
    for line in metrics.splitlines():
        if line.startswith("ddpm_in_flight_rows") and float(line.rsplit(" ", 1)[1]) > 0:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the gateway image afterwards")
    parser.add_argument("--context", action="store_true", help="also measure the build context's size")
    parser.add_argument(
        "--build-only", action="store_true", help="make the base and build the image, print the timings, stop"
    )
    args = parser.parse_args(argv)
    reason = unusable_reason()
    if reason:
        sys.stderr.write(f"cannot check the image here: {reason}\n")
        return 2
    report: dict[str, object] = {"base_seconds": round(make_base(), 1)}
    build = build_gateway()
    report |= {"build_seconds": round(build.seconds, 1), "image_bytes": build.size_bytes}
    if args.build_only:
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    sys.path.insert(0, str(ROOT))
    # The dashboard's own queries, and the requests that give each of its panels a series.
    from tests.deploy.test_dashboard import query_texts, serve_sample_traffic

    if args.context:
        report["context_bytes"] = context_bytes(ignore=True)
        report["context_bytes_without_dockerignore"] = context_bytes(ignore=False)
    container = run_gateway(env=SAMPLE_TRAFFIC_ENV)
    try:
        png = httpx.post(f"{container.url}/generate", json={"class_label": 1, "steps": 10}, timeout=60)
        report["generate"] = [png.status_code, png.headers.get("content-type")]
        serve_sample_traffic(container.url, *SAMPLE_TRAFFIC_K)
        report["uid"] = server_uid(container)
        report["healthcheck"] = healthcheck(container) or "ok"
        empty = [q for q, result in prometheus_queries(query_texts()).items() if not result]
        report["queries_without_data"] = empty
        report["drain"] = sigterm_drain(container, {"class_label": 2, "steps": 400, "num_images": 2}).__dict__
    finally:
        container.remove()
        if not args.keep:
            podman_run("rmi", GATEWAY_IMAGE)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
