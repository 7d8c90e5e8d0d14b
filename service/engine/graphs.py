"""CUDA graph capture for the bucket runner: on the runner's own device and stream, one capture at a time.

Why each piece (torch/cuda/graphs.py, torch 2.13):
- `torch.cuda.graph` without a `stream` captures on one process-wide side stream, created on whichever
  device was current when it was first used: cuda:0 in a fresh thread. An engine on cuda:1 (or a Triton
  instance on device 1) would record on cuda:0's stream. So each runner creates its own stream under its
  device, and warm-up, capture and replay all run inside `torch.cuda.device(device)`.
- A capture in the default "global" error mode fails when any other thread makes a capture-unsafe call
  (cudaMalloc, a synchronize), and engines warm up in parallel threads while others serve. "thread_local"
  confines that check to the capturing thread, and CAPTURE_LOCK makes captures in this process take
  turns (one engine restarting its executor never captures beside another's first warm-up).

`GraphBackend` is what the runner talks to; `CudaGraphs` is the real one. `EmulatedGraphs` replays a
captured body by running it again, on any device: tests and `bench.gpu_check --dry-run` drive the whole
capture / check / replay path with it on the CPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

# Process-wide: the CUDA caching allocator routes a capturing stream's allocations to its graph's pool,
# and concurrent captures in one process are not something torch supports. Every runner of every engine
# captures under this lock.
CAPTURE_LOCK = threading.Lock()


class Graph(Protocol):
    def replay(self) -> None: ...


class GraphBackend(Protocol):
    def device_context(self) -> contextlib.AbstractContextManager[Any]:
        """Makes the runner's device current (capture, warm-up and replay all run inside it)."""
        ...

    def warm(self, body: Callable[[], None]) -> None:
        """Run `body` eagerly the way it will be captured (on the capture stream)."""
        ...

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        """Record `body` into a new graph sharing memory pool `pool` (None: a new one); returns the
        graph and its pool. The caller holds CAPTURE_LOCK."""
        ...

    def synchronize(self) -> None: ...


class CudaGraphs:
    """torch.cuda graphs on one device, on a stream of that device. `cuda` is torch.cuda (tests pass a
    stand-in with the same names to check what is called on which device)."""

    def __init__(self, device: torch.device, cuda: Any = torch.cuda) -> None:
        self.device = device
        self.cuda = cuda
        with cuda.device(device):
            self.stream = cuda.Stream(device)

    def device_context(self) -> contextlib.AbstractContextManager[Any]:
        return self.cuda.device(self.device)  # type: ignore[no-any-return]

    def warm(self, body: Callable[[], None]) -> None:
        # The pattern torch's docs give for warm-up before capture: a side stream that waits for the
        # current one, and the current one waits for it afterwards.
        current = self.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with self.cuda.stream(self.stream):
            body()
        current.wait_stream(self.stream)

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        self.cuda.synchronize(self.device)
        graph = self.cuda.CUDAGraph()
        with self.cuda.graph(graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            body()
        self.cuda.synchronize(self.device)
        return graph, graph.pool()

    def synchronize(self) -> None:
        self.cuda.synchronize(self.device)


class EmulatedGraphs:
    """A stand-in on any device: capture runs the body once, replay runs it again (what a faithful graph
    does to its static buffers). It exercises the runner's buffers, padding, check and clones."""

    def __init__(self) -> None:
        self.captures = 0

    @contextlib.contextmanager
    def device_context(self) -> Iterator[None]:
        yield

    def warm(self, body: Callable[[], None]) -> None:
        body()

    def capture(self, body: Callable[[], None], pool: Any) -> tuple[Graph, Any]:
        body()
        self.captures += 1
        return _Rerun(body), pool

    def synchronize(self) -> None:
        pass


class _Rerun:
    def __init__(self, body: Callable[[], None]) -> None:
        self.body = body

    def replay(self) -> None:
        self.body()


def enter_device(device: torch.device, cuda: Any = torch.cuda) -> None:
    """Make `device` the calling thread's current CUDA device (engine threads call it first): anything
    torch creates without naming a device (streams, generators, the allocator's context) lands on it."""
    if device.type == "cuda":
        cuda.set_device(device)
