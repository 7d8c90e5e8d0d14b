"""The contract between the HTTP layer and wherever generations run.

The API talks only to a `Backend`: the in-process engine pool (service.backends.embedded) or Triton
Inference Server workers reached through tritonclient (service.backends.triton). Nothing here mentions
tensors or devices: images come back as uint8 arrays [H, W, C]. The vocabulary both sides share is the
engine's and is re-exported here, so the API imports it from its one neighbour below: the generation
(GenerationSpec, GenerationResult, GenerationProgress), the typed errors every backend reports in (the
API maps them to HTTP in one place), the observer protocol metrics implement, and worker settings.

Asyncio: `submit` is called on the event loop and returns at once; the `Generation` it returns is
awaited there. A backend bridges whatever threads or sockets it uses back onto that loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.diffusion.samplers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS
from service.engine import errors
from service.engine.degrade import StepOption
from service.engine.errors import EngineError, InvalidRequest
from service.engine.generation import MAX_SEED, GenerationProgress, GenerationResult, GenerationSpec
from service.engine.observer import EngineObserver, NullObserver
from service.engine.request import MAX_PREVIEWS, RowStatus
from service.engine.request import Request as RowRequest
from service.engine.settings import EngineSettings, Precision
from service.model.manifest import ModelManifest
from service.quality.tradeoff import Tradeoff

__all__ = [
    "DEFAULT_SAMPLER",
    "MAX_PREVIEWS",
    "MAX_SEED",
    "PROGRESS_BUFFER",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Backend",
    "BackendStartupError",
    "EngineError",
    "EngineLoad",
    "EngineObserver",
    "EngineSettings",
    "FleetStats",
    "Generation",
    "GenerationProgress",
    "GenerationResult",
    "GenerationSpec",
    "ModelInfo",
    "NullObserver",
    "ObserverFactory",
    "Precision",
    "ProgressStream",
    "RowRequest",
    "RowStatus",
    "StepOption",
    "UnknownModel",
    "errors",
]

ObserverFactory = Callable[[str], EngineObserver]  # model name -> its observer (one per served model)


class UnknownModel(InvalidRequest):
    """The request names a model this backend does not serve."""

    code = "model_not_found"


class BackendStartupError(RuntimeError):
    """A backend cannot start (missing model folder, no such device); the message says what to fix."""


@dataclass(frozen=True)
class ModelInfo:
    """What the API needs to know about a served model to validate requests and describe it."""

    name: str
    image_size: int
    image_channels: int
    num_classes: int | None  # None: unconditional
    class_names: tuple[str, ...]
    num_timesteps: int  # T: the largest K
    learn_sigma: bool
    tradeoff: Tradeoff | None  # calibrated quality per (sampler, K); None when uncalibrated
    manifest: ModelManifest  # what GenerationSpec.validate checks a request against
    has_gamma: bool = False  # gamma.json present: variance=analytic can run


@dataclass(frozen=True)
class EngineLoad:
    """Occupancy of one worker of one model, for routing estimates and metrics."""

    model: str
    engine: str
    queue_depth: int
    in_flight: int
    free_slots: int
    backlog_steps: int = 0  # row-steps still to run (queued rows' steps + running rows' remaining)
    row_steps_per_second: float = 0.0  # measured while iterating; 0 before the first step


@dataclass(frozen=True)
class FleetStats:
    """The workers of a backend that runs on others (Triton), for /metrics; counts are totals."""

    workers: dict[str, int]  # state (live | unready | draining) -> workers in it now
    ejections: dict[str, int]  # why (stream | health | unavailable | send) -> workers ejected
    resolves: dict[str, int]  # outcome of discovery's lookups (ok | failed) -> lookups
    changes: dict[str, int]  # joined | left (discovery) -> workers
    resends: int  # requests sent again after a worker failed them


class Generation(Protocol):
    """A submitted request. `result()` raises the engine error that ended it (DeadlineExceeded, ...)."""

    id: str

    async def result(self) -> GenerationResult: ...

    def progress(self) -> AsyncIterator[GenerationProgress]:
        """Per-step progress until the result is ready (only when submitted with progress=True).
        Cancelling one `__anext__` (a timeout) leaves the stream usable."""
        ...

    def cancel(self) -> None:
        """Stop at the next step; thread-safe, idempotent, harmless after the end."""
        ...


class Backend(Protocol):
    async def start(self) -> None:
        """Load models and start workers; returns before warm-up ends (see `ready`).
        Raises BackendStartupError for what the operator must fix."""
        ...

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new work; with `drain`, let queued and in-flight requests finish first."""
        ...

    @property
    def ready(self) -> bool:
        """Every worker warmed up and accepting work."""
        ...

    @property
    def alive(self) -> bool:
        """Started and able to serve (possibly still warming up); False once a model has no worker."""
        ...

    def models(self) -> Sequence[ModelInfo]:
        """The served models, the default first."""
        ...

    def loads(self) -> list[EngineLoad]: ...

    def memory_bytes(self) -> dict[str, int]:
        """Memory in use per device name."""
        ...

    def fleet(self) -> FleetStats | None:
        """Its workers' membership and failures; None for a backend without remote workers."""
        ...

    def submit(self, spec: GenerationSpec, *, progress: bool = False) -> Generation:
        """Queue a generation; raises InvalidRequest / UnknownModel / QueueFull / EngineShuttingDown /
        EngineDead synchronously, and never blocks on the device."""
        ...


# Progress events held for one reader. A reader that stops reading (an SSE client that no longer reads
# its socket) must not make the gateway hold every step's event of a K = 4000 request: past this many,
# the oldest are dropped (each event supersedes the ones before it, and that reader is not looking).
PROGRESS_BUFFER = 256


class ProgressStream:
    """Progress of one generation, engine (via the event loop) -> its one reader, in order, bounded by
    PROGRESS_BUFFER. An async iterator, and a class rather than an async generator so that a timed-out
    `__anext__` (a keep-alive tick) leaves it usable instead of finalising it. Loop thread only."""

    def __init__(self, limit: int = PROGRESS_BUFFER) -> None:
        self._events: deque[GenerationProgress] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._finished = False
        self.dropped = 0  # events dropped because the reader fell PROGRESS_BUFFER behind

    def put(self, event: GenerationProgress) -> None:
        if self._finished:
            return
        if len(self._events) >= self._limit:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def finish(self) -> None:
        """No more events: the reader gets what is buffered, then StopAsyncIteration (for good)."""
        self._finished = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._events)

    def __aiter__(self) -> ProgressStream:
        return self

    async def __anext__(self) -> GenerationProgress:
        while not self._events:
            if self._finished:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()
