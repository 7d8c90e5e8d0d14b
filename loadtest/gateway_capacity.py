"""Gateway capacity: CPU time one `ddpm-serve` gateway process spends per request, over Triton workers
that answer at once, written to docs/gateway-capacity.md.

    python -m loadtest.gateway_capacity --out docs/gateway-capacity.md [--baseline REV] [--profile]

The workers are real tritonservers (the nvidia-pytriton wheel's binary) serving a model folder made here:
the deployed config.pbtxt of model_store/fmnist-small and loadtest.instant_worker as its model.py, which
answers every request with a fixed image of the manifest's shape (1 x 28 x 28). The gateway is the real
`ddpm-serve` (DDPM_BACKEND=triton, DDPM_TRITON_URLS, the bundled model's folder, log level info as
deployed). Closed-loop clients on keep-alive connections send tiny requests (class label, K=10, one
image), response_format json and png measured apart. The gateway's user + system CPU time (its threads,
not its children) is read from /proc/PID/stat before and after each measured window: ms CPU / request =
Δ CPU ÷ requests answered 200. The load generator (this process: a minimal HTTP/1.1 client on asyncio
streams) and the workers share the cores with the gateway, which lowers requests/s but not the gateway's
CPU per request; their CPU is reported beside it, never counted in it.

--baseline REV (repeatable; a git revision, or a folder holding service/) also runs a gateway from that
code (PYTHONPATH), its windows alternating with the current one's over the same workers, so before and
after come from one run. --profile samples the current gateway with py-spy (--py-spy, default from PATH)
during an extra, unmeasured window per format and lists where the event loop's time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from loadtest import report
from loadtest.gateway_results import FORMATS, STEPS, CapacityResult, ProfileSummary, Window, summarize
from loadtest.machine import describe, load_average
from loadtest.server import HOST, Server, ServerConfig
from service.triton_worker.launcher import TritonProcess, missing_reason

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "model_store" / "fmnist-small"
MAIN_THREAD = "event loop (main thread)"
PYTHON_THREADS = "other Python threads"


@dataclass(frozen=True)
class GatewayConfig(ServerConfig):
    """A gateway run from `source` (None: this checkout) at the deployed log level."""

    source: Path | None = None
    log_level: str = "info"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["DDPM_LOG_LEVEL"] = self.log_level
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.source), env.get("PYTHONPATH")) if p)
        return env


def instant_repo(model_dir: Path, where: Path) -> Path:
    """A Triton model repository: model_dir's deployed config.pbtxt and the instant model.py."""
    model = where / "repository" / model_dir.name
    (model / "1").mkdir(parents=True)
    shutil.copy(model_dir / "config.pbtxt", model / "config.pbtxt")
    shutil.copy(model_dir / "model.json", model / "model.json")  # the image shape
    shutil.copy(Path(__file__).with_name("instant_worker.py"), model / "1" / "model.py")
    return model.parent


@contextlib.contextmanager
def instant_workers(model_dir: Path, count: int, where: Path) -> Iterator[list[TritonProcess]]:
    repo = instant_repo(model_dir, where)
    workers = [TritonProcess(repo, [model_dir.name], where) for _ in range(count)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def gateway_source(source: str, where: Path) -> Path:
    """The folder whose service/ package a gateway runs: `source` when it holds one, else the service/
    tree of the git revision `source`."""
    if (Path(source) / "service").is_dir():
        return Path(source).resolve()
    tree = where / f"rev-{len(list(where.glob('rev-*')))}"
    tree.mkdir()
    command = ["git", "-C", str(ROOT), "archive", source, "service"]
    archive = subprocess.run(command, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


# -- CPU time from /proc --------------------------------------------------------------------------


def _stat(path: Path) -> tuple[str, list[str]]:
    """(comm, the fields after it) of a /proc/.../stat file."""
    text = path.read_text()
    return text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()


def _seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's threads, its children excluded."""
    return _seconds(_stat(Path(f"/proc/{pid}/stat"))[1])


def thread_seconds(pid: int) -> dict[str, float]:
    """A process's CPU time by thread: the main thread, its other Python threads (CPython leaves them
    the process's name), and native threads by their own name (gRPC's event_engine, ...)."""
    main = _stat(Path(f"/proc/{pid}/stat"))[0]
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name, fields = _stat(task / "stat")
            group = MAIN_THREAD if task.name == str(pid) else PYTHON_THREADS if name == main else name
            seconds[group] = seconds.get(group, 0.0) + _seconds(fields)
    return seconds


def processes() -> dict[int, tuple[int, str, float]]:
    """Every process now: pid -> (parent pid, command line, CPU seconds)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            name, fields = _stat(stat)
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(stat.parent.name)] = (int(fields[1]), command.strip() or f"[{name}]", _seconds(fields))
    return found


def descendants(pids: list[int], table: dict[int, tuple[int, str, float]]) -> set[int]:
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += [child for child, (parent, _, _) in table.items() if parent == pid and child not in found]
    return found


# -- the load generator ---------------------------------------------------------------------------


def request_bytes(port: int, response_format: str) -> bytes:
    body = json.dumps({"class_label": 3, "steps": STEPS, "seed": 1, "response_format": response_format})
    head = (
        f"POST /generate HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


async def _read_response(reader: asyncio.StreamReader) -> int:
    """One Content-Length framed response; returns its status."""
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def drive(port: int, response_format: str, requests: int, concurrency: int) -> Counter[int]:
    """`requests` requests over `concurrency` keep-alive connections; returns status -> count."""
    message = request_bytes(port, response_format)
    left = [requests]
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(message)
                statuses[await _read_response(reader)] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


# -- measuring ------------------------------------------------------------------------------------


def measure(
    label: str,
    gateway: Server,
    workers: list[TritonProcess],
    response_format: str,
    requests: int,
    concurrency: int,
) -> Window:
    """One window of `requests` requests; raises unless every answer is a 200."""
    worker_pids = [w.process.pid for w in workers if w.process is not None]

    def workers_cpu() -> float:
        table = processes()
        return sum(table[pid][2] for pid in descendants(worker_pids, table) if pid in table)

    load = load_average()
    threads, gateway_cpu, worker_cpu, driver_cpu = (
        thread_seconds(gateway.pid),
        cpu_seconds(gateway.pid),
        workers_cpu(),
        time.process_time(),
    )
    start = time.perf_counter()
    statuses = asyncio.run(drive(gateway.port, response_format, requests, concurrency))
    wall = time.perf_counter() - start
    if set(statuses) != {200}:
        raise RuntimeError(f"{label} {response_format}: answers other than 200: {dict(statuses)}")
    return Window(
        label,
        response_format,
        statuses[200],
        wall,
        cpu_seconds(gateway.pid) - gateway_cpu,
        {name: spent - threads.get(name, 0.0) for name, spent in thread_seconds(gateway.pid).items()},
        workers_cpu() - worker_cpu,
        time.process_time() - driver_cpu,
        (load, load_average()),
    )


def others_cpu(
    before: dict[int, tuple[int, str, float]], after: dict[int, tuple[int, str, float]], ours: set[int]
) -> list[tuple[str, float]]:
    """CPU seconds other processes used between two process tables, by command line, largest first."""
    spent: dict[str, float] = {}
    for pid, (_, command, seconds) in after.items():
        if pid not in ours:
            spent[command[:100]] = spent.get(command[:100], 0.0) + seconds - before.get(pid, (0, "", 0.0))[2]
    return sorted(((c, s) for c, s in spent.items() if s >= 0.5), key=lambda item: -item[1])[:6]


def record(py_spy: str, pid: int, out: Path, load: Callable[[], object]) -> ProfileSummary:
    """Sample `pid` with py-spy while `load()` runs."""
    command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--gil", "--full-filenames"]
    spy = subprocess.Popen(
        [*command, "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # attached before the load starts
    try:
        load()
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        _, error = spy.communicate(timeout=60)
    if not out.is_file():
        raise RuntimeError(f"py-spy wrote no profile: {error.decode(errors='replace')[-2000:]}")
    return summarize(out.read_text())


def log(message: str) -> None:
    print(f"[gateway-capacity] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> CapacityResult:
    begin, before = time.perf_counter(), processes()
    work = Path(tempfile.mkdtemp(prefix="ddpm-gateway-capacity-"))
    windows: list[Window] = []
    profiles: dict[str, ProfileSummary] = {}
    try:
        sources: dict[str, Path | None] = {f"baseline ({b})": gateway_source(b, work) for b in args.baseline}
        sources["current" if args.current is None else f"current ({args.current})"] = (
            None if args.current is None else gateway_source(args.current, work)
        )
        with instant_workers(MODEL_DIR, args.workers, work) as workers, contextlib.ExitStack() as stack:
            base = GatewayConfig(MODEL_DIR, triton_urls=tuple(w.url for w in workers))
            gateways = {
                label: stack.enter_context(Server(replace(base, source=source)))
                for label, source in sources.items()
            }

            def window(label: str, response_format: str, requests: int) -> Window:
                return measure(label, gateways[label], workers, response_format, requests, args.concurrency)

            for label in gateways:  # warm-up: imports, first connections, caches
                for response_format in FORMATS:
                    window(label, response_format, args.warmup)
            for round_ in range(args.rounds):
                for response_format in FORMATS:
                    for label in gateways:
                        windows.append(window(label, response_format, args.requests))
                        ms = windows[-1].ms_per_request
                        log(f"round {round_ + 1}, {label}, {response_format}: {ms:.3f} ms CPU / request")
            if args.profile:
                label = list(gateways)[-1]
                for response_format in FORMATS:
                    out = work / f"profile-{response_format}.txt"
                    load = partial(window, label, response_format, args.requests)
                    profiles[response_format] = record(args.py_spy, gateways[label].pid, out, load)
            ours = descendants([os.getpid(), *(w.process.pid for w in workers if w.process)], processes())
            ours |= {g.pid for g in gateways.values()}
            others = others_cpu(before, processes(), ours)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - begin
    return CapacityResult(windows, args.requests, args.concurrency, args.workers, profiles, others, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gateway-capacity.md"))
    parser.add_argument("--requests", type=int, default=3000, help="requests per measured window")
    parser.add_argument("--warmup", type=int, default=500, help="requests per gateway and format first")
    parser.add_argument("--rounds", type=int, default=5, help="measured windows per gateway and format")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=1, help="instant tritonserver processes")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="also measure a gateway run from this git revision (or folder holding service/); repeatable",
    )
    parser.add_argument("--current", help="a git revision or folder to measure instead of this checkout")
    parser.add_argument("--profile", action="store_true", help="sample the current gateway with py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy binary")
    args = parser.parse_args()
    reason = missing_reason()
    if reason is not None:
        parser.error(f"cannot start Triton here: {reason}")
    if args.profile and shutil.which(args.py_spy) is None:
        parser.error(f"no py-spy at {args.py_spy!r} (pip install py-spy, or pass --py-spy)")
    machine = describe()
    result = run(args)
    command = " ".join(["python -m loadtest.gateway_capacity", *sys.argv[1:]])
    header = (
        "# Gateway capacity: CPU per request over instant Triton workers\n\n"
        f"Measured {datetime.now(UTC).date().isoformat()} with `{command}` (the method is the module's "
        "docstring).\n\n" + report.table(["", ""], [r for r in machine.rows() if r[0] != "torch threads"])
    )
    text = result.markdown(header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
