"""Engine: the loop thread around an EngineCore, with readiness and a draining stop.

Lifecycle: `start()` spawns the thread, which builds the executor and warms up every bucket; `ready`
turns true after that (and false while a crashed executor is being rebuilt). `stop(drain=True)` refuses
new requests at once with EngineShuttingDown and returns when queued and in-flight rows have finished
(or, past `timeout`, fails what is left with EngineShuttingDown).

Asyncio callers: call `submit` directly (it only validates and queues) and bridge the callbacks, which
run on the engine thread, with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import torch

from service.diffusion.sampling import Denoiser
from service.engine.core import DoneCallback, EngineCore, ProgressCallback
from service.engine.errors import EngineShuttingDown
from service.engine.observer import EngineObserver
from service.engine.request import Request, RowResult
from service.engine.scheduler import Load
from service.engine.settings import EngineSettings
from service.model.store import LoadedModel

log = logging.getLogger(__name__)

IDLE_WAKE_SECONDS = 0.5  # an idle loop re-checks its state now and then, whatever it was told


class Engine:
    """One model on one device."""

    def __init__(
        self,
        model: LoadedModel,
        settings: EngineSettings | None = None,
        *,
        device: torch.device | str | None = None,
        observer: EngineObserver | None = None,
        denoiser: Denoiser | None = None,
        name: str | None = None,
    ) -> None:
        self.core = EngineCore(
            model,
            settings or EngineSettings(),
            device=device,
            observer=observer,
            denoiser=denoiser,
            name=name,
        )
        self._thread: threading.Thread | None = None
        self._stop: str | None = None  # None, "drain" or "abort"

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def ready(self) -> bool:
        return self.core.ready.is_set()

    @property
    def alive(self) -> bool:
        """Running and not dead (it may be warming up or restarting its executor)."""
        return self._thread is not None and self._thread.is_alive() and not self.core.dead

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"engine {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"ddpm-engine-{self.name}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until warmed up; False on timeout or if the engine died while warming up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.core.ready.wait(0.05):
            if self.core.dead or (self._thread is not None and not self._thread.is_alive()):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def submit(
        self,
        requests: Sequence[Request],
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Queue the rows of one request (see request.make_rows); results arrive through on_done, once
        per row. Raises InvalidRequest, QueueFull, EngineShuttingDown or EngineDead synchronously."""
        self.core.submit(requests, on_done, on_progress)

    def cancel(self, group_id: str) -> int:
        return self.core.cancel(group_id)

    def load(self) -> Load:
        return self.core.load()

    def generate(self, requests: Sequence[Request], timeout: float | None = None) -> list[RowResult]:
        """Blocking convenience (CLI, Triton backend, tests): submit and wait for every row's result."""
        results: dict[int, RowResult] = {}
        done = threading.Event()
        positions = {id(request): i for i, request in enumerate(requests)}

        def on_done(result: RowResult) -> None:
            results[positions[id(result.request)]] = result
            if len(results) == len(requests):
                done.set()

        self.submit(requests, on_done)
        if not done.wait(timeout):
            for group_id in {request.group_id for request in requests}:
                self.cancel(group_id)
            raise TimeoutError(f"no result within {timeout} s")
        return [results[i] for i in range(len(requests))]

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with `drain`, finish queued and in-flight rows first (up to `timeout`)."""
        self.begin_stop(drain)
        thread = self._thread
        if thread is None:
            self.core.evict_all(EngineShuttingDown, "the engine stopped before it started")
            return
        thread.join(timeout)
        if thread.is_alive():
            with self.core.changed:
                self._stop = "abort"
                self.core.changed.notify_all()
            thread.join()

    def begin_stop(self, drain: bool = True) -> None:
        """Refuse new requests from now on and tell the loop to stop; does not wait."""
        with self.core.changed:
            if self.core.refusal is None:
                self.core.refusal = EngineShuttingDown("the engine is shutting down")
            self._stop = "drain" if drain and self._stop != "abort" else "abort"
            self.core.changed.notify_all()
        self.core.ready.clear()  # a draining engine takes no new traffic: /readyz turns false at once

    def _run(self) -> None:
        try:
            self.core.start_executor()
        except Exception as e:
            log.exception("engine %s failed to warm up", self.name)
            self.core.die(f"the executor on {self.name} failed to warm up: {type(e).__name__}: {e}")
            return
        try:
            while self._next_iteration():
                self.core.step()
        except Exception as e:  # a bug outside the executor: the engine's state cannot be trusted
            log.exception("engine %s loop crashed", self.name)
            self.core.die(f"the engine on {self.name} crashed: {type(e).__name__}: {e}")
            return
        if self._stop == "abort":
            self.core.evict_all(EngineShuttingDown, "the engine stopped before this request finished")

    def _next_iteration(self) -> bool:
        """Wait for work; False when the loop should end (aborted, dead, or drained)."""
        core = self.core
        with core.changed:
            while not core.scheduler.has_work and self._stop is None and not core.dead:
                core.changed.wait(IDLE_WAKE_SECONDS)
            if core.dead or self._stop == "abort":
                return False
            return core.scheduler.has_work
