"""Engine: the façade of one model on one device — the loop thread around an EngineCore, readiness and a
draining stop. Everything outside the engine package (the pool, backends, the Triton worker, the CLI)
talks to this class; the core's fields stay the core's.

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
import uuid

import torch

from service.diffusion.sampling import Denoiser
from service.engine.core import DoneCallback, EngineCore, ProgressCallback
from service.engine.devices import memory_bytes
from service.engine.errors import EngineShuttingDown
from service.engine.generation import Collation, GenerationResult, GenerationSpec
from service.engine.graphs import enter_device
from service.engine.heap import HeapTrimmer
from service.engine.observer import EngineObserver
from service.engine.request import RowResult
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
        self._core = EngineCore(
            model,
            settings or EngineSettings(),
            device=device,
            observer=observer,
            denoiser=denoiser,
            name=name,
        )
        self._thread: threading.Thread | None = None
        self._stop: str | None = None  # None, "drain" or "abort"
        self.heap = HeapTrimmer()  # gives freed memory back once idle (heap.py says why)

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def model_name(self) -> str:
        return self._core.model.name

    @property
    def device(self) -> torch.device:
        return self._core.device

    @property
    def ready(self) -> bool:
        return self._core.ready

    @property
    def warmed_up(self) -> bool:
        """The first warm-up has finished (readiness may have been lost since, e.g. while restarting)."""
        return self._core.warm_ups > 0

    @property
    def alive(self) -> bool:
        """Running and not dead (it may be warming up or restarting its executor)."""
        return self._thread is not None and self._thread.is_alive() and not self._core.dead

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"engine {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"ddpm-engine-{self.name}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until warmed up; False on timeout or if the engine died while warming up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._core.wait_ready(0.05):
            if self._core.dead or (self._thread is not None and not self._thread.is_alive()):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def submit(
        self,
        spec: GenerationSpec,
        group_id: str,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        """Validate and queue one generation under `group_id` (the id `cancel` takes); returns its K.
        Results arrive through on_done, once per row (on the engine thread). Raises InvalidRequest,
        QueueFull, EngineShuttingDown or EngineDead synchronously."""
        return self._core.submit(spec, group_id, on_done, on_progress)[0].num_steps

    def cancel(self, group_id: str) -> int:
        return self._core.cancel(group_id)

    def load(self) -> Load:
        return self._core.load()

    def compiled_sizes(self) -> frozenset[int]:
        """Batch sizes served compiled so far (CPU: compiled in the background after warm-up)."""
        executor = self._core.executor
        if executor is None:
            return frozenset()
        if executor.compiler is None:
            return frozenset(executor.buckets) if executor.runner.exact is False else frozenset()
        return executor.compiler.ready

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Block until background compilation has ended (every size, or given up); True if it has
        ended or there is none. Benchmarks call it to measure the steady state."""
        executor = self._core.executor
        if executor is None or executor.compiler is None:
            return True
        return executor.compiler.wait(timeout)

    def memory_bytes(self) -> int:
        return memory_bytes(self.device)

    def generate(self, spec: GenerationSpec, timeout: float | None = None) -> GenerationResult:
        """Blocking convenience (CLI, benchmarks, tests): submit and wait for the collated result.
        Raises the engine error that ended the generation, or TimeoutError."""
        collation = Collation(spec)
        done = threading.Event()
        answer: list[GenerationResult | Exception] = []

        def on_done(result: RowResult) -> None:
            outcome = collation.add(result)
            if outcome is not None:
                answer.append(outcome)
                done.set()

        group_id = uuid.uuid4().hex
        self.submit(spec, group_id, on_done)
        if not done.wait(timeout):
            self.cancel(group_id)
            raise TimeoutError(f"no result within {timeout} s")
        if isinstance(answer[0], Exception):
            raise answer[0]
        return answer[0]

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with `drain`, finish queued and in-flight rows first (up to `timeout`)."""
        self.begin_stop(drain)
        thread = self._thread
        if thread is None:
            self._core.evict_all(EngineShuttingDown, "the engine stopped before it started")
            return
        thread.join(timeout)
        if thread.is_alive():
            self._stop = "abort"
            self._core.wake()
            thread.join()

    def begin_stop(self, drain: bool = True) -> None:
        """Refuse new requests from now on and tell the loop to stop; does not wait. A draining engine
        takes no new traffic: `ready` (and so /readyz) turns false at once."""
        self._stop = "drain" if drain and self._stop != "abort" else "abort"
        self._core.refuse(EngineShuttingDown("the engine is shutting down"))

    def _run(self) -> None:
        core = self._core
        try:
            # First: what torch creates on this thread without naming a device (the graphs' streams,
            # the allocator's context) must land on this engine's device, not cuda:0.
            enter_device(core.device)
            core.start_executor()
        except Exception as e:
            log.exception("engine %s failed to warm up", self.name)
            core.die(f"the executor on {self.name} failed to warm up: {type(e).__name__}: {e}")
            return
        try:
            while self._next_iteration():
                core.step()
        except Exception as e:  # a bug outside the executor: the engine's state cannot be trusted
            log.exception("engine %s loop crashed", self.name)
            core.die(f"the engine on {self.name} crashed: {type(e).__name__}: {e}")
            return
        finally:
            core.close_executor()
        if self._stop == "abort":
            core.evict_all(EngineShuttingDown, "the engine stopped before this request finished")

    def _next_iteration(self) -> bool:
        """Wait for work; False when the loop should end (aborted, dead, or drained)."""
        while True:
            has_work = self._core.wait_for_work(IDLE_WAKE_SECONDS, lambda: self._stop is not None)
            if self._core.dead or self._stop == "abort":
                return False
            if has_work or self._stop is not None:
                self.heap.busy()
                return has_work
            self.heap.idle()  # trims once the engine has been idle for half a second
