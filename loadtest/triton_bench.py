"""A gateway over one Triton worker vs the embedded engine, both with default settings, side by side in one
run; written to docs/performance-triton.md.

    python -m loadtest.triton_bench        # about 11 min, plus the first build of the compile cache

Needs the `tritonserver` extra (the nvidia-pytriton wheel's real tritonserver) and tritonclient. One random
`fmnist-small` model (the bundled model's compute) is served two ways, every setting at its default:

- embedded: `ddpm-serve`, the engine in its own process;
- triton: a real tritonserver on a repository holding that model folder with model_store/fmnist-small's
  config.pbtxt and 1/model.py as deployed, behind `ddpm-serve` with DDPM_BACKEND=triton (HTTP -> gRPC
  stream -> Python-backend stub -> gRPC -> PNG).

Both stacks start once and stay up, and neither is measured before it serves every batch size compiled
(the embedded server: Server.wait_compiled, which builds the package cache the first time, about 7 min on
2 cores; the worker: the line its background compiler writes to Triton's log, at once when the cache is
warm). Then the stacks take turns, so that other work on the machine hits both alike:

- idle K=50: one request at a time, alternating request by request (which goes first alternates too); the
  client's end-to-end time. Bar: triton median <= 1.1 x embedded.
- saturation: 32 closed-loop clients, K uniform over {10, 25, 50, 100}, one image per request, PNG
  responses; windows in ABBA order (embedded, triton, triton, embedded, ...), each after its own warm-up.
  Served = sum of K of the images answered 200 inside the windows / their length; K=10 p50 over the same
  answers. Bar: triton >= 0.9 x embedded.

Each window also records the cores each process used (CPU seconds / window) and the cores the rest of the
machine used meanwhile (/proc/stat busy time minus this run's processes), and the doc lists the other
processes that used the most CPU during the run: the bars are ratios, the rest says how quiet it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest import driver, report
from loadtest.machine import describe, load_average, random_model_dir
from loadtest.server import Server, ServerConfig, parse_metrics
from loadtest.triton_report import (
    CLIENTS,
    IDLE_STACK,
    IDLE_STEPS,
    IDLE_WARMUP,
    SATURATION_MIX,
    Stack,
    Window,
    abba,
    markdown,
)
from service.triton_worker.launcher import TritonProcess, missing_reason

MODEL = "fmnist-small"
DEPLOYED = Path(__file__).resolve().parents[1] / "model_store" / MODEL  # its config.pbtxt and 1/
COMPILED_LINE = "compiled batch sizes"  # background_compile's line once every size is served compiled
# ... and the engine's lines when a size failed, or when there is no compiler at all
COMPILE_FAILED = ("stay eager", "no C++ compiler")
COMPILE_WAIT_S = 1800.0
TICK = os.sysconf("SC_CLK_TCK")
PUBLISH_S = 1.5  # a worker publishes its iterations' metrics once a second
Log = Callable[[str], None]


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (all its threads) so far, with `children` its reaped children's too;
    0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11 : 15 if children else 13]) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the machine has been busy since boot, every core and process (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK  # all but idle and iowait


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        listed = Path(f"/proc/{parent}/task/{parent}/children")
        new = {int(p) for p in listed.read_text().split()} - found if listed.is_file() else set()
        found |= new
        todo += new
    return found


class Census:
    """CPU used by the processes outside this run while it measures, by command line: snapshots at the
    start and end of each measured phase (a process's reaped children count in its own figure)."""

    def __init__(self) -> None:
        self.ours: set[int] = {os.getpid()}
        self.used: dict[str, float] = {}
        self._start: dict[int, tuple[str, float]] = {}

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> None:
        for pid, (name, seconds) in self._snapshot().items():
            if pid not in self.ours:
                self.used[name] = self.used.get(name, 0.0) + seconds - self._start.get(pid, (name, 0.0))[1]

    def top(self) -> str:
        ranked = sorted(((s, n) for n, s in self.used.items() if s >= 5.0), reverse=True)[:6]
        return "; ".join(f"`{name}` {seconds:.0f} CPU-s" for seconds, name in ranked) or "none over 5 CPU-s"

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        table = {}
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().split(b"\0")
                name = " ".join(Path(a.decode(errors="replace")).name for a in args if a)[:60]
                if entry.name == "1":  # init: what it counts is the orphans it reaped
                    name = "short-lived processes, reaped by PID 1"
                if name:  # kernel threads have none
                    table[int(entry.name)] = (name, cpu_seconds(int(entry.name), children=True))
        return table


def triton_repo(model_dir: Path, where: Path) -> Path:
    """A one-model Triton repository: the model folder with the deployed config.pbtxt and 1/ as they are."""
    repo = where / "repository"
    shutil.copytree(model_dir, repo / MODEL)
    shutil.copytree(DEPLOYED / "1", repo / MODEL / "1")
    shutil.copy(DEPLOYED / "config.pbtxt", repo / MODEL / "config.pbtxt")
    return repo


def wait_worker_compiled(worker: TritonProcess, timeout_s: float = COMPILE_WAIT_S) -> float:
    """Seconds until the worker's background compiler has finished (read from Triton's log)."""
    start = time.perf_counter()
    while True:
        text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
        if COMPILED_LINE in text:
            return time.perf_counter() - start
        failed = any(line in text for line in COMPILE_FAILED)
        if failed or time.perf_counter() - start > timeout_s:
            raise RuntimeError(f"the worker did not compile every batch size:\n{text[-3000:]}")
        time.sleep(2.0)


@contextlib.contextmanager
def stacks(model_dir: Path, work: Path, log: Log) -> Iterator[tuple[Stack, Stack]]:
    """Both stacks up, each serving every batch size compiled; all stopped on exit."""
    with contextlib.ExitStack() as stop:
        log("starting the embedded server; waiting until it serves every batch size compiled")
        server = stop.enter_context(Server(ServerConfig(model_dir)))
        roles = {"ddpm-serve": [server.pid]}
        embedded = Stack(
            "embedded", server.base_url, f"{server.base_url}/metrics", roles, server.wait_compiled()
        )
        log(f"embedded compiled (waited {embedded.compile_wait_s:.0f} s); starting tritonserver")
        worker = TritonProcess(triton_repo(model_dir, work), [MODEL], work)
        stop.callback(worker.stop)
        worker.start()
        worker.wait_ready(timeout=900.0)
        waited = wait_worker_compiled(worker)
        gateway = stop.enter_context(Server(ServerConfig(model_dir, triton_urls=(worker.url,))))
        assert worker.process is not None
        roles = {
            "gateway": [gateway.pid],
            "tritonserver": [worker.process.pid],
            "Python-backend stub": sorted(descendants(worker.process.pid)),
        }
        log(f"worker compiled (waited {waited:.0f} s); measuring")
        metrics = f"http://{worker.host}:{worker.metrics_port}/metrics"  # the engine's, on the worker
        yield embedded, Stack("triton", gateway.base_url, metrics, roles, waited)


def iterations_seconds(stack: Stack) -> float:
    """The engine's ddpm_step_duration_seconds_sum so far: the seconds its iterations took."""
    text = httpx.get(stack.metrics_url, timeout=10.0, trust_env=False).text
    return parse_metrics(text).value("ddpm_step_duration_seconds_sum")


def idle(pair: tuple[Stack, Stack], runs: int) -> None:
    """K=50 requests one at a time, the stacks taking turns; each counted time goes to its stack, and
    the seconds its engine spent iterating meanwhile (the rest is HTTP, the hop to a worker, PNG)."""
    clients = {s.name: httpx.Client(base_url=s.base_url, timeout=120.0, trust_env=False) for s in pair}
    engine: dict[str, float] = {}
    try:
        for i in range(IDLE_WARMUP + runs):
            if i == IDLE_WARMUP:
                time.sleep(PUBLISH_S)
                engine = {s.name: iterations_seconds(s) for s in pair}
            for stack in pair if i % 2 == 0 else pair[::-1]:
                body = {"class_label": i % 10, "steps": IDLE_STEPS, "seed": i}
                start = time.perf_counter()
                response = clients[stack.name].post("/generate", json=body)
                seconds = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"{stack.name}: an idle request answered {response.status_code}")
                if i >= IDLE_WARMUP:
                    stack.idle_s.append(seconds)
        time.sleep(PUBLISH_S)
        for stack in pair:
            stack.idle_engine_s = iterations_seconds(stack) - engine[stack.name]
    finally:
        for client in clients.values():
            client.close()


def saturate(
    stack: Stack, beside: Stack, census: Census, warmup_s: float, window_s: float, seed: int
) -> Window:
    """One closed-loop run against `stack` while `beside` idles; CPU is read at the window's two ends."""
    samples: list[tuple[dict[str, float], float, float]] = []

    def sample() -> None:
        if samples:
            census.stop()
        else:
            census.start()
        roles = {role: sum(cpu_seconds(p) for p in pids) for role, pids in stack.roles.items()}
        roles["load generator"] = cpu_seconds(os.getpid())
        roles[IDLE_STACK] = sum(cpu_seconds(p) for p in beside.pids)
        samples.append((roles, machine_busy_seconds() - sum(roles.values()), load_average()))

    async def closed_loop() -> list[driver.Outcome]:
        loop = asyncio.get_running_loop()
        loop.call_later(warmup_s, sample)
        loop.call_later(warmup_s + window_s, sample)
        return await driver.closed_loop(
            stack.base_url,
            concurrency=CLIENTS,
            mix=SATURATION_MIX,
            seed=seed,
            duration_s=warmup_s + window_s,
            max_requests=100_000,
            client_timeout_s=300.0,
        )

    outcomes = asyncio.run(closed_loop())
    (before, rest_before, load_before), (after, rest_after, load_after) = samples
    inside = [o for o in outcomes if o.status == 200 and warmup_s <= o.finished_s <= warmup_s + window_s]
    return Window(
        seconds=window_s,
        evals=sum(o.steps for o in inside),
        images=len(inside),
        k10_s=[o.latency_s for o in inside if o.steps == 10],
        tally=driver.tally(outcomes),
        cores={role: (after[role] - before[role]) / window_s for role in after},
        others=(rest_after - rest_before) / window_s,
        load=(load_before, load_after),
    )


def run(args: argparse.Namespace, census: Census, log: Log) -> tuple[Stack, Stack]:
    model_dir = random_model_dir()
    work = Path(tempfile.mkdtemp(prefix="ddpm-triton-bench-"))
    try:
        with stacks(model_dir, work, log) as (embedded, triton):
            census.ours |= descendants(os.getpid())  # both stacks' processes are this one's descendants
            census.start()
            idle((embedded, triton), args.idle_runs)
            census.stop()
            log(f"idle K=50: embedded {embedded.idle_median:.3f} s, triton {triton.idle_median:.3f} s")
            for round_, stack, beside in abba(embedded, triton, args.rounds):
                window = saturate(stack, beside, census, args.warmup, args.window, seed=round_)
                stack.windows.append(window)
                load = f"load {window.load[0]:.2f} → {window.load[1]:.2f}"
                log(f"{stack.name}: {window.evals / window.seconds:.1f} img·steps/s ({load})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(model_dir.parent, ignore_errors=True)
    return embedded, triton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/performance-triton.md"))
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before each saturation window")
    parser.add_argument("--window", type=float, default=45.0, help="seconds of each saturation window")
    parser.add_argument("--rounds", type=int, default=4, help="saturation windows per setup (ABBA order)")
    parser.add_argument("--idle-runs", type=int, default=20, help="idle K=50 requests per setup")
    args = parser.parse_args()
    reason = missing_reason()
    if reason is not None:
        parser.error(f"cannot start Triton here: {reason}")

    def log(message: str) -> None:
        print(f"[triton-bench] {message}", file=sys.stderr, flush=True)

    begin, machine, census = time.perf_counter(), describe(), Census()
    embedded, triton = run(args, census, log)
    rows = [row for row in machine.rows() if row[0] != "torch threads"]
    rows += [
        ("Settings", "defaults on both sides (ddpm-serve; model_store's config.pbtxt); device cpu"),
        (
            "Compiled before measuring",
            f"waited {embedded.compile_wait_s:.0f} s for the embedded server, {triton.compile_wait_s:.0f} s "
            "for the worker (0: every batch size was in the package cache)",
        ),
        ("Other processes while measuring", census.top()),
    ]
    header = (
        "# A Triton worker vs the embedded engine, both with default settings\n\n"
        f"Measured {datetime.now(UTC).date().isoformat()} with `python -m loadtest.triton_bench` (one run, "
        f"{(time.perf_counter() - begin) / 60:.1f} min, both setups side by side; the module docstring has "
        "the method). Generated: rerun rather than edit.\n\n" + report.table(["", ""], rows)
    )
    text = markdown(embedded, triton, args.rounds, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
