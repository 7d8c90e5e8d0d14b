"""One request on the Triton backend: where it was sent, its future, its progress stream, its metrics.

Lives on the event loop: the backend calls every method but `cancel` (thread-safe) from there.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any, Protocol

import numpy as np

from service.backends.base import (
    EngineError,
    EngineObserver,
    GenerationProgress,
    GenerationResult,
    GenerationSpec,
    ProgressStream,
    RowStatus,
)
from service.backends.triton.protocol import WireRequest, decode_degradation
from service.backends.triton.routing import WorkerState


class _Backend(Protocol):
    def cancel(self, generation: TritonGeneration) -> None: ...


class TritonGeneration:
    def __init__(
        self,
        spec: GenerationSpec,
        triton_name: str,
        progress: bool,
        backend: _Backend,
        observer: EngineObserver | None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.triton_name = triton_name
        self.wants_progress = progress
        self.observer = observer
        # The rows the worker will make (the spec was validated by ServedModels.resolve): the Request
        # objects the observer reports on, as the embedded backend's engine reports them.
        self.rows = spec.rows(self.id)
        self.started = time.monotonic()
        self.deadline = None if spec.timeout_seconds is None else self.started + spec.timeout_seconds
        self.tried: set[WorkerState] = set()
        self.worker: WorkerState | None = None
        self.request_id: str | None = None
        self.attempt = 0
        self.resends = 0  # sent again after a worker failed it (at most MAX_RESENDS: see the backend)
        self.row_steps = spec.num_images * _steps(spec)  # its cost, for least-outstanding-work routing
        self.cancelled = False
        self.timer: asyncio.TimerHandle | None = None
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[GenerationResult] = self._loop.create_future()
        # A failure nobody awaits (the client left) must not be logged as "never retrieved".
        self._future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._progress = ProgressStream() if progress else None

    # -- the Generation protocol -------------------------------------------------------------------

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._future)  # a caller that stops waiting must not cancel it

    def progress(self) -> ProgressStream:
        if self._progress is None:
            raise RuntimeError("submit with progress=True to stream progress")
        return self._progress

    def cancel(self) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._backend.cancel(self)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._backend.cancel, self)

    @property
    def done(self) -> bool:
        return self._future.done()

    # -- the backend's bookkeeping -----------------------------------------------------------------

    def bind(self, worker: WorkerState) -> str:
        """Sent to `worker`: count it there; returns the Triton request id of this attempt."""
        self.attempt += 1
        self.worker = worker
        self.tried.add(worker)
        worker.assign(self.spec.num_images, self.row_steps)
        self.request_id = f"{self.id}:{self.attempt}"
        return self.request_id

    def unbind(self) -> None:
        if self.worker is not None:
            self.worker.unassign(self.spec.num_images, self.row_steps)
        self.worker = None
        self.request_id = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def wire_request(self, timeout_seconds: float | None) -> WireRequest:
        """What is sent to a worker for this request."""
        return WireRequest.from_spec(self.spec, self.id, timeout_seconds, self.wants_progress)

    def put_progress(self, values: np.ndarray, preview: np.ndarray | None = None) -> None:
        if self._progress is not None and not self.done:
            index, steps_done, num_steps = (int(v) for v in values.reshape(-1)[:3])
            self._progress.put(GenerationProgress(index, steps_done, num_steps, preview))

    def succeed(self, result: Any, worker: WorkerState | None) -> None:
        """A final response with images (a tritonclient InferResult)."""
        if self.done:
            return
        images = result.as_numpy("IMAGES")
        queue = [float(s) for s in result.as_numpy("QUEUE_SECONDS").reshape(-1)]
        total = time.monotonic() - self.started  # as the client sees it: network and failovers included
        steps = int(result.as_numpy("STEPS_USED").reshape(-1)[0])
        engine = worker.url if worker else "triton"
        if self.observer is not None:
            for row, wait in zip(self.rows, queue, strict=False):
                self.observer.on_row_admitted(engine, row, wait)
                self.observer.on_row_finished(engine, row, RowStatus.FINISHED, wait, total)
        self._end()
        self._future.set_result(
            GenerationResult(
                images=[np.ascontiguousarray(image) for image in images],
                steps=steps,
                queue_seconds=max(queue, default=0.0),
                total_seconds=total,
                degradation=decode_degradation(result.as_numpy("DEGRADATION")),
            )
        )

    def finish(self, error: EngineError, worker: WorkerState | None = None) -> None:
        if self.done:
            return
        if self.observer is not None:
            total = time.monotonic() - self.started
            engine = worker.url if worker else "triton"
            for row in self.rows:
                self.observer.on_row_finished(engine, row, RowStatus.for_error(error), total, total)
        self._end()
        self._future.set_exception(error)

    def _end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self._progress is not None:
            self._progress.finish()


def _steps(spec: GenerationSpec) -> int:
    """K, or for a respacing string ("ddim50", "10,15,20") the sum of its counts: a routing weight only."""
    if isinstance(spec.steps, int):
        return spec.steps
    return max(1, sum(int(n) for n in re.findall(r"\d+", spec.steps)))
