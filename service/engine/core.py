"""EngineCore: one iteration is schedule -> execute -> update (vLLM v1's EngineCore.step()).

Threads: `submit`, `cancel` and `load` may be called from any thread, the asyncio loop's included (none
waits for the device; the lock is never held across a network call). The executor and every callback
(a row's on_done / on_progress, the observer) run on the engine thread, see service.engine.engine.
Results are uint8 images [H, W, C] (service.images.to_uint8 of the final x_0), so callers never touch
tensors or devices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import ParamSpec

import numpy as np
import torch

from service.diffusion.sampling import Denoiser
from service.engine.buckets import bucket_sizes
from service.engine.degrade import GroupDecision
from service.engine.errors import Cancelled, EngineDead, EngineError, ExecutorFailed, NonFiniteOutput
from service.engine.executor import Executor, StepOutcome
from service.engine.generation import GenerationSpec
from service.engine.observer import EngineObserver, NullObserver
from service.engine.request import RowProgress, RowResult, RowState, RowStatus
from service.engine.scheduler import Load, Scheduler
from service.engine.settings import EngineSettings
from service.engine.tables import StepTables
from service.model.store import LoadedModel

log = logging.getLogger(__name__)
P = ParamSpec("P")

DoneCallback = Callable[[RowResult], None]
ProgressCallback = Callable[[RowProgress], None]

MAX_CONSECUTIVE_CRASHES = 3  # executor crashes without a good step in between before the engine gives up


class EngineCore:
    def __init__(
        self,
        model: LoadedModel,
        settings: EngineSettings,
        *,
        device: torch.device | str | None = None,
        observer: EngineObserver | None = None,
        denoiser: Denoiser | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.settings = settings
        self.device = torch.device(device) if device is not None else next(model.net.parameters()).device
        self.name = name or str(self.device)
        self.observer: EngineObserver = observer or NullObserver()
        self.clock = clock
        self.tables = StepTables(model.manifest.diffusion, settings.table_cache_size, model.gamma_per_step)
        num_slots = bucket_sizes(settings.max_batch, settings.buckets)[-1]
        self.scheduler = Scheduler(
            num_slots, settings.max_queue, run_to_completion=settings.run_to_completion, clock=clock
        )
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified on submit, cancel and stop
        self.executor: Executor | None = None
        self._ready = threading.Event()
        self.refusal: EngineError | None = None  # set when stopping or dead: what submit raises
        self._denoiser = denoiser
        self.warm_ups = 0  # completed warm-ups: 1 after start, +1 per executor restart
        self._crashes = 0
        self._iteration_seconds = 0.0  # moving average, for the QueueFull retry hint
        self._row_steps_per_second = 0.0  # moving average of rows stepped / iteration time (kept when idle)

    @property
    def dead(self) -> bool:
        return isinstance(self.refusal, EngineDead)

    @property
    def ready(self) -> bool:
        """Warmed up and accepting work (false while warming up, rebuilding the executor, or stopping)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- callers' side (any thread) ---------------------------------------------------------------

    def submit(
        self,
        spec: GenerationSpec,
        group_id: str,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[RowState]:
        """Validate a generation and queue its rows (all or none); results arrive through on_done, once
        per row. Raises InvalidRequest, QueueFull, EngineShuttingDown or EngineDead synchronously."""
        try:
            num_steps = spec.validate(
                self.model.manifest,
                lambda steps, sampler: self.tables.get(steps, sampler).num_steps,
                has_gamma=self.model.gamma is not None,
            )
            rows = [RowState(request, num_steps, on_done, on_progress) for request in spec.rows(group_id)]
            if spec.fallbacks:
                group = GroupDecision()  # the first admitted row decides for its siblings (degrade.py)
                for row in rows:
                    row.group = group
            with self.lock:
                if self.refusal is not None:
                    raise type(self.refusal)(str(self.refusal))
                self.scheduler.add(rows)
                self.changed.notify_all()
        except EngineError as e:
            _call(self.observer.on_rejected, self.name, e.code)
            raise
        return rows

    def cancel(self, group_id: str) -> int:
        """Cancel a request's rows, queued or in flight; each ends with Cancelled. Returns the count."""
        with self.lock:
            count = self.scheduler.cancel(group_id)
            if count:
                self.changed.notify_all()
        return count

    def load(self) -> Load:
        with self.lock:
            return replace(self.scheduler.load(), row_steps_per_second=self._row_steps_per_second)

    # -- the loop's side (service.engine.engine drives these from its thread) ----------------------

    def refuse(self, error: EngineError) -> None:
        """Refuse every submit from now on with `error` (unless already refusing); wakes the loop."""
        with self.lock:
            if self.refusal is None:
                self.refusal = error
            self.changed.notify_all()
        self._ready.clear()

    def wake(self) -> None:
        with self.lock:
            self.changed.notify_all()

    def wait_for_work(self, timeout: float, stop: Callable[[], bool]) -> bool:
        """Block until there is work, `stop()` is true, the engine died or `timeout` passed (the loop
        re-checks its state now and then, whatever it was told); returns whether there is work."""
        with self.lock:
            if not self.scheduler.has_work and not stop() and not self.dead:
                self.changed.wait(timeout)
            return self.scheduler.has_work

    # -- engine thread ------------------------------------------------------------------------------

    def start_executor(self) -> None:
        """Build the executor and warm up every bucket; readiness turns true only after that."""
        executor = Executor(
            self.model, self.settings, self.tables, self.device, self._denoiser, self._on_compiled
        )
        seconds = executor.warm_up()
        self.executor = executor
        self.warm_ups += 1
        if self.refusal is None:  # not while stopping: a draining engine must not turn ready again
            self._ready.set()
        _call(self.observer.on_ready, self.name, seconds)

    def _on_compiled(self, size: int, seconds: float) -> None:
        # On the compile thread (see EngineObserver.on_compiled).
        _call(self.observer.on_compiled, self.name, size, seconds)

    def close_executor(self) -> None:
        """The loop ended: stop background work the executor started."""
        if self.executor is not None:
            self.executor.close()

    def step(self) -> None:
        """One iteration: drop expired / cancelled rows, admit, advance every in-flight row one step."""
        with self.lock:
            plan = self.scheduler.schedule()
        for row, error in plan.dropped:
            self._end(row, error=error)
        if not plan.running:
            return
        for row in plan.admitted:
            _call(self.observer.on_row_admitted, self.name, row.request, self.clock() - row.request.arrival)
        executor = self.executor
        assert executor is not None, "step() before start_executor()"
        start = time.perf_counter()
        try:
            executor.admit(plan.admitted)
            for row, budget in plan.replan:
                if executor.replan(row, budget):
                    log.debug("re-planned %s after %d steps", row.request.request_id, row.steps_done)
            outcome = executor.step(plan.running)
        except Exception as e:  # a device error, or a bug in the network: the executor is rebuilt
            self._recover(e)
            return
        seconds = time.perf_counter() - start
        self._crashes = 0
        _call(self.observer.on_step, self.name, len(plan.running), outcome.bucket, seconds)
        self._update(plan.running, outcome, seconds)

    def _update(self, running: list[RowState], outcome: StepOutcome, seconds: float) -> None:
        now = self.clock()
        ended: list[tuple[RowState, np.ndarray | None, EngineError | None]] = []
        for row, image in outcome.finished:
            cancelled = Cancelled(f"request {row.request.group_id!r} was cancelled")
            ended.append((row, None, cancelled) if row.cancel_requested else (row, image, None))
        for row in outcome.non_finite:
            ended.append((row, None, _non_finite(row)))
        with self.lock:
            for row, _, _ in ended:
                self.scheduler.release(row)
            # The first measurement is taken as it is: averaging it with the 0 that stands for "unknown"
            # would make deadline checks (and re-plans) trust a ten times too fast iteration at first.
            previous = self._iteration_seconds
            self._iteration_seconds = seconds if previous == 0 else 0.9 * previous + 0.1 * seconds
            rate = len(running) / seconds if seconds > 0 else 0.0
            previous_rate = self._row_steps_per_second
            self._row_steps_per_second = rate if previous_rate == 0 else 0.9 * previous_rate + 0.1 * rate
            self.scheduler.retry_after = self._retry_hint(running)
            self.scheduler.seconds_per_step = self._iteration_seconds
        for row in running:
            if row.first_step_at is None:
                row.first_step_at = now
        for row, pixels, error in ended:
            self._end(row, pixels, error)
        for row in running:
            if not row.is_terminal:
                self._progress(row, outcome.previews.get(row))

    def _retry_hint(self, running: list[RowState]) -> float:
        """Rough seconds until the queue has moved by a slot-full: mean remaining steps x iteration time."""
        if not running:
            return 1.0
        remaining = sum(max(row.cursor, 0) for row in running) / len(running)
        return float(min(60.0, max(1.0, remaining * self._iteration_seconds)))

    def _recover(self, error: Exception) -> None:
        """Fail only the in-flight rows (queued ones stay queued) and rebuild the executor."""
        log.error("executor on %s crashed; restarting it", self.name, exc_info=error)
        self._ready.clear()
        with self.lock:
            rows = self.scheduler.evict_running()
        cause = f"{type(error).__name__}: {error}"
        for row in rows:
            self._end(row, error=_lost(row, self.name, cause))
        _call(self.observer.on_executor_restart, self.name, cause)
        self.close_executor()
        self.executor = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._crashes += 1
        if self._crashes >= MAX_CONSECUTIVE_CRASHES:
            self.die(f"the executor on {self.name} crashed {self._crashes} times in a row ({cause})")
            return
        try:
            self.start_executor()
        except Exception as e:
            log.exception("executor on %s could not be restarted", self.name)
            self.die(f"the executor on {self.name} could not be restarted: {type(e).__name__}: {e}")

    def die(self, message: str) -> None:
        """Refuse everything from now on and fail every row with EngineDead."""
        with self.lock:
            self.refusal = EngineDead(message)
            self.changed.notify_all()
        self._ready.clear()
        self.evict_all(EngineDead, message)

    def evict_all(self, kind: type[EngineError], message: str) -> None:
        with self.lock:
            rows = self.scheduler.evict_all()
        for row in rows:
            self._end(row, error=kind(f"request {row.request.group_id!r}: {message}"))

    def _end(self, row: RowState, image: np.ndarray | None = None, error: EngineError | None = None) -> None:
        """Report a row's outcome exactly once."""
        if row.is_terminal:
            return
        if self.executor is not None:
            self.executor.release(row)
        row.status = RowStatus.FINISHED if error is None else RowStatus.for_error(error)
        row.finished_at = now = self.clock()
        result = row.result(image, error, now)
        _call(
            self.observer.on_row_finished,
            self.name,
            row.request,
            row.status,
            result.queue_seconds,
            result.total_seconds,
        )
        if row.on_done is not None:
            _call(row.on_done, result)

    def _progress(self, row: RowState, preview: np.ndarray | None = None) -> None:
        # Throttled to whole percentages: at most 100 calls for a K = 4000 row, one per step for K <= 100.
        # A preview is always sent (request.MAX_PREVIEWS bounds them).
        if row.on_progress is None:
            return
        percent = row.steps_done * 100 // row.num_steps
        if percent != row.reported_percent or preview is not None:
            row.reported_percent = percent
            _call(row.on_progress, RowProgress(row.request, row.steps_done, row.num_steps, preview))


def _call(callback: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
    """Callers' and observers' code must not be able to stop the engine thread."""
    try:
        callback(*args, **kwargs)
    except Exception:
        log.exception("engine callback %r raised", callback)


def _non_finite(row: RowState) -> NonFiniteOutput:
    request = row.request
    return NonFiniteOutput(
        f"image {request.image_index} of request {request.group_id!r} became non-finite (NaN or inf) "
        f"at step {row.steps_done} of {row.num_steps}; no image was produced"
    )


def _lost(row: RowState, device: str, cause: str) -> ExecutorFailed:
    request = row.request
    return ExecutorFailed(
        f"image {request.image_index} of request {request.group_id!r} was lost to a device error on "
        f"{device} ({cause}); the executor was restarted, so the request can be retried"
    )
