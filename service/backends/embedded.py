"""The in-process backend: one EnginePool per model, in this process's threads (the default deployment).

Engine callbacks run on the engine threads; `EmbeddedGeneration` hops them onto the event loop with
`loop.call_soon_threadsafe`, so its futures and queues are only ever touched by the loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from service.backends.base import (
    BackendStartupError,
    EngineLoad,
    GenerationProgress,
    GenerationResult,
    GenerationSpec,
    ModelInfo,
    ObserverFactory,
    ProgressStream,
    UnknownModel,
)
from service.backends.model_info import model_info
from service.engine.devices import DeviceError, serving_devices
from service.engine.errors import EngineError
from service.engine.generation import Collation
from service.engine.pool import EnginePool
from service.engine.request import RowProgress, RowResult
from service.engine.settings import EngineSettings
from service.engine.threads import confine_to_one_thread
from service.model.store import load_model

log = logging.getLogger(__name__)


class EmbeddedBackend:
    def __init__(
        self,
        model_dirs: Sequence[Path],
        settings: EngineSettings,
        *,
        device: str = "auto",
        observer_for: ObserverFactory | None = None,
    ) -> None:
        if not model_dirs:
            raise BackendStartupError("no model folder given")
        self.model_dirs = [Path(d) for d in model_dirs]
        self.settings = settings
        self.device = device
        self.observer_for = observer_for
        self._pools: dict[str, EnginePool] = {}
        self._models: list[ModelInfo] = []
        self.failures: list[str] = []  # model folders left out at start, with why

    async def start(self) -> None:
        if self._pools:
            raise RuntimeError("the backend was already started")
        # Reading weights takes seconds for real models: keep the event loop free meanwhile.
        await asyncio.to_thread(self._load_all)
        for pool in self._pools.values():
            pool.start()

    def _load_all(self) -> None:
        confine_to_one_thread()  # a loader thread that kept an OpenMP team would slow the engine's
        try:
            devices = serving_devices(self.device)
        except DeviceError as e:
            raise BackendStartupError(str(e)) from None
        failures = []
        for model_dir in self.model_dirs:
            # A folder that cannot be served (unreadable manifest, corrupt or foreign weights) is left out
            # and logged; the others are served. Only when none loads does the server refuse to start.
            try:
                info = model_info(model_dir)
                if info.name in self._pools:
                    raise BackendStartupError(f"a model named {info.name!r} is already served")
                observer = self.observer_for(info.name) if self.observer_for else None
                pool = EnginePool.create(partial(load_model, model_dir), self.settings, observer, devices)
            except (ValueError, OSError, BackendStartupError) as e:
                failures.append(f"{model_dir}: cannot serve the model: {e}")
                log.error("%s", failures[-1])
                continue
            self._pools[info.name] = pool
            self._models.append(info)
        self.failures = failures
        if not self._pools:
            raise BackendStartupError("no model could be served: " + "; ".join(failures))

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        # Each pool stop blocks until its engines drain: run them side by side, off the loop.
        await asyncio.gather(*(asyncio.to_thread(p.stop, drain, timeout) for p in self._pools.values()))

    @property
    def ready(self) -> bool:
        return bool(self._pools) and all(pool.ready for pool in self._pools.values())

    @property
    def alive(self) -> bool:
        return bool(self._pools) and all(pool.alive for pool in self._pools.values())

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def pool(self, model: str) -> EnginePool:
        try:
            return self._pools[model]
        except KeyError:
            raise UnknownModel(f"no model named {model!r}; served: {', '.join(self._pools)}") from None

    def loads(self) -> list[EngineLoad]:
        return [
            EngineLoad(
                name,
                engine,
                load.queue_depth,
                load.in_flight,
                load.free_slots,
                load.backlog_steps,
                load.row_steps_per_second,
            )
            for name, pool in self._pools.items()
            for engine, load in pool.loads().items()
        ]

    def fleet(self) -> None:
        return None

    def memory_bytes(self) -> dict[str, int]:
        # Per device, whichever model asks: both figures (CUDA allocator, process RSS) are per process.
        memory: dict[str, int] = {}
        for pool in self._pools.values():
            memory.update(pool.memory_bytes())
        return memory

    def submit(self, spec: GenerationSpec, *, progress: bool = False) -> EmbeddedGeneration:
        pool = self.pool(spec.model)
        generation = EmbeddedGeneration(pool, spec, asyncio.get_running_loop(), progress)
        generation.submit()
        return generation


class EmbeddedGeneration:
    """One generation on the pool: engine callbacks (engine thread) hop onto the loop, where a
    Collation turns the rows' results into the answer."""

    def __init__(
        self, pool: EnginePool, spec: GenerationSpec, loop: asyncio.AbstractEventLoop, progress: bool
    ) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self._pool = pool
        self._loop = loop
        self._future: asyncio.Future[GenerationResult] = loop.create_future()
        # A failure nobody awaits (the client left) must not be logged as "never retrieved".
        self._future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._collation = Collation(spec)
        self._progress = ProgressStream() if progress else None

    def submit(self) -> None:
        on_progress = self._on_progress if self._progress is not None else None
        self._pool.submit(self.spec, self.id, self._on_done, on_progress)

    async def result(self) -> GenerationResult:
        # shield: a caller that stops waiting (timeout, disconnect) must not cancel the shared future.
        return await asyncio.shield(self._future)

    def progress(self) -> ProgressStream:
        if self._progress is None:
            raise RuntimeError("submit with progress=True to stream progress")
        return self._progress

    def cancel(self) -> None:
        self._pool.cancel(self.id)

    @property
    def done(self) -> bool:
        return self._future.done()

    # -- engine thread -> loop ------------------------------------------------------------------

    def _on_done(self, result: RowResult) -> None:
        self._to_loop(self._row_done, result)

    def _on_progress(self, progress: RowProgress) -> None:
        index = progress.request.image_index
        event = GenerationProgress(index, progress.steps_done, progress.num_steps, progress.preview)
        self._to_loop(self._put_progress, event)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the app has gone, nobody is waiting any more
            log.debug("generation %s finished after its event loop closed", self.id)

    # -- loop -------------------------------------------------------------------------------------

    def _put_progress(self, event: GenerationProgress) -> None:
        if self._progress is not None and not self._future.done():
            self._progress.put(event)

    def _row_done(self, result: RowResult) -> None:
        outcome = self._collation.add(result)
        if outcome is None:
            if self._collation.failed:
                self.cancel()  # the request has failed as a whole: its other images would be thrown away
            return
        if self._future.done():
            return
        if isinstance(outcome, EngineError):
            self._future.set_exception(outcome)
        else:
            self._future.set_result(outcome)
        if self._progress is not None:
            self._progress.finish()
