"""TritonBackend: the Backend whose generations run on Triton workers (see the package docstring).

Lives on the event loop. Requests go to the worker the router picks; the stream events of every worker
come back here (tritonclient's thread -> event loop) and finish their generations; a worker that fails
(stream broken, UNAVAILABLE, health checks failed) is ejected and its requests are sent again to another,
each at most MAX_RESENDS times. Which workers exist is the fleet's business (fleet, discovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.backends.base import (
    BackendStartupError,
    EngineLoad,
    FleetStats,
    GenerationSpec,
    ModelInfo,
    ObserverFactory,
)
from service.backends.triton.discovery import Membership, Source
from service.backends.triton.fleet import Connect, Fleet, default_connect, is_unavailable
from service.backends.triton.generation import TritonGeneration
from service.backends.triton.health import HEALTH_INTERVAL_S, HealthChecks
from service.backends.triton.models import ServedModels
from service.backends.triton.protocol import StreamEvent, WireRequest, decode_error
from service.backends.triton.routing import WorkerState
from service.engine.errors import (
    Cancelled,
    DeadlineExceeded,
    EngineDead,
    EngineError,
    EngineShuttingDown,
    QueueFull,
)

if TYPE_CHECKING:  # imported at start(): tritonclient is an optional dependency
    from service.backends.triton.connection import TritonConnection

log = logging.getLogger(__name__)

DEADLINE_GRACE_S = 1.0  # the worker's own deadline error normally arrives first
RESOLVE_INTERVAL_S = 5.0
# A request a worker failed is sent to one other worker, not to every one in turn: a request that itself
# kills workers (a "query of death") must not take the fleet down one worker after another.
MAX_RESENDS = 1


class TritonBackend:
    def __init__(
        self,
        urls: Sequence[str],
        model_dirs: Sequence[Path],
        *,
        observer_for: ObserverFactory | None = None,
        health_interval: float = HEALTH_INTERVAL_S,
        connect: Connect | None = None,
        dns: Source | None = None,
        resolve_interval: float = RESOLVE_INTERVAL_S,
    ) -> None:
        """`connect(url, on_event)` makes a worker's connection (default: TritonConnection; tests fake it).
        `dns`: discovery, asked every `resolve_interval` seconds; its workers join the static `urls`."""
        if not urls and dns is None:
            raise BackendStartupError(
                "the triton backend needs worker URLs (DDPM_TRITON_URLS) or a DNS name (DDPM_TRITON_DNS)"
            )
        if not model_dirs:
            raise BackendStartupError("no model folder given")
        self.workers = Fleet(urls)
        self.router = self.workers.router
        self._membership = None if dns is None else Membership(self, dns, resolve_interval)
        self.model_dirs = [Path(d) for d in model_dirs]
        self.observer_for = observer_for
        self.connect = connect
        self._models = ServedModels()
        self._checks = HealthChecks(self, health_interval)
        self._pending: dict[str, TritonGeneration] = {}  # Triton request id -> generation
        self._health: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        connect = self.connect or default_connect()
        self._loop = asyncio.get_running_loop()
        for model_dir in self.model_dirs:
            self._models.add(model_dir)
        self.workers.connect_all(connect, self._on_stream_event)
        if self._membership is not None:
            await self._membership.refresh()
            self._discovery = self._loop.create_task(self._membership.run())
        await self._checks.check_all()  # serve at once when the workers are already up
        self._health = self._loop.create_task(self._checks.run())

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        self._stopping = True
        pending = {g for g in self._pending.values() if not g.done}
        if drain and pending:
            await asyncio.wait([asyncio.ensure_future(g.result()) for g in pending], timeout=timeout)
        for generation in list(self._pending.values()):
            self._cancel_remote(generation)
            generation.finish(EngineShuttingDown("the gateway stopped before this request finished"))
        self._pending.clear()
        for task in (self._health, self._discovery):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in self.workers.connections.values()))
        self._stopped = True

    @property
    def ready(self) -> bool:
        return (
            bool(self._models)
            and not self._stopping
            and all(self.router.serving(name) for name in self._models.triton_names())
        )

    @property
    def alive(self) -> bool:
        # The gateway stays alive while workers come and go: readiness (and 503s) say when none serves.
        return bool(self._models) and not self._stopped

    def models(self) -> list[ModelInfo]:
        return self._models.infos()

    def loads(self) -> list[EngineLoad]:
        return []  # queue depth and in-flight rows are the workers' metrics (see the package docstring)

    def memory_bytes(self) -> dict[str, int]:
        return {}

    def fleet(self) -> FleetStats:
        return self.workers.stats()

    # -- requests (event loop) --------------------------------------------------------------------

    def submit(self, spec: GenerationSpec, *, progress: bool = False) -> TritonGeneration:
        if self._stopping:
            raise EngineShuttingDown("the gateway is shutting down")
        info, triton_name = self._models.resolve(spec)
        observer = self.observer_for(info.name) if self.observer_for else None
        generation = TritonGeneration(spec, triton_name, progress, self, observer)
        self._send(generation)  # raises EngineDead when no worker is live: nothing is left pending
        if spec.timeout_seconds is not None:
            assert self._loop is not None
            generation.timer = self._loop.call_later(
                spec.timeout_seconds + DEADLINE_GRACE_S, self._expire, generation
            )
        return generation

    def cancel(self, generation: TritonGeneration) -> None:
        if generation.done:
            return
        generation.cancelled = True
        if generation.worker is not None and generation.worker.live:
            self._cancel_remote(generation)  # the worker answers the request with Cancelled
        else:
            self._release(generation)
            generation.finish(Cancelled("the request was cancelled"))

    def _send(self, generation: TritonGeneration) -> None:
        """Send to the least loaded live worker not tried yet; raises EngineDead when there is none."""
        worker = self.router.choose(generation.triton_name, exclude=generation.tried)
        if worker is None:
            live = ", ".join(w.url for w in self.router.live) or "none"
            known = ", ".join(w.url for w in self.router.workers) or "none (discovery found no worker yet)"
            raise EngineDead(
                f"no Triton worker can serve model {generation.spec.model!r} now "
                f"(known: {known}; live: {live})"
            )
        remaining = generation.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before a worker could take it")
        wire = generation.wire_request(remaining)
        request_id = generation.bind(worker)
        try:
            self.workers.connection(worker.url).send(generation.triton_name, wire, request_id)
        except EngineError:
            generation.unbind()
            raise
        except Exception as e:  # the stream closed under us: that worker is gone, try another
            generation.unbind()
            self.drop(worker, f"sending failed: {e}", "send")
            self._send(generation)
            return
        self._pending[request_id] = generation

    def _release(self, generation: TritonGeneration) -> None:
        if generation.request_id is not None:
            self._pending.pop(generation.request_id, None)
        worker = generation.worker
        generation.unbind()
        if worker is not None and worker.draining:
            self.workers.retire_if_idle(worker)

    def _reroute(self, generation: TritonGeneration, cause: EngineError, *, failed: bool = True) -> None:
        """Its worker failed it (or vanished; `failed`) or had no room: another worker takes it, else the
        request fails. A failed request is sent again at most MAX_RESENDS times."""
        self._release(generation)
        if generation.done:
            return
        if generation.cancelled:
            generation.finish(Cancelled("the request was cancelled"))
            return
        if failed:
            if generation.resends >= MAX_RESENDS:
                generation.finish(cause)
                return
            generation.resends += 1
            self.workers.resends += 1
        try:
            self._send(generation)
        except EngineDead:
            generation.finish(cause)
        except EngineError as e:
            generation.finish(e)

    def _expire(self, generation: TritonGeneration) -> None:
        if generation.done:
            return
        self._cancel_remote(generation)
        self._release(generation)
        generation.finish(DeadlineExceeded("the request's deadline passed (the worker did not answer)"))

    def _cancel_remote(self, generation: TritonGeneration) -> None:
        worker = generation.worker
        if worker is None or not worker.live:
            return
        try:
            wire = WireRequest(request_id=generation.id, cancel=True)
            self.workers.connection(worker.url).send(generation.triton_name, wire, f"{generation.id}:cancel")
        except Exception as e:  # best effort: the worker's deadline frees its slots anyway
            log.debug("cancelling %s on %s failed: %s", generation.id, worker.url, e)

    # -- stream events (tritonclient's thread -> event loop) -----------------------------------------

    def _on_stream_event(self, event: StreamEvent) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the app has gone, nobody waits
            loop.call_soon_threadsafe(self._handle_event, event)

    def _handle_event(self, event: StreamEvent) -> None:
        if event.broken:
            if self._stopping:  # closing the streams at shutdown cancels them: not a failure
                return
            worker = self.router.find(event.url)
            # A late event of a stream already replaced by a reconnect (or of a forgotten worker) says
            # nothing about the worker now.
            if worker is not None and worker.live and self.workers.connection(event.url).epoch == event.epoch:
                self.drop(worker, f"its stream failed: {event.error}", "stream")
            return
        generation = self._pending.get(event.request_id or "")
        if generation is None:
            if event.error is not None and event.request_id is None:
                log.warning("a Triton error named no request: %s", event.error)
            return
        if event.error is not None:
            worker = generation.worker
            cause = EngineDead(
                f"Triton at {worker.url if worker else '?'} refused the request: {event.error}"
            )
            if worker is not None and worker.live and is_unavailable(event.error):
                self.drop(worker, f"it answered {event.error}", "unavailable")  # re-sends this one too
            else:
                self._reroute(generation, cause)
            return
        self._on_result(generation, event.result, event.final)

    def _on_result(self, generation: TritonGeneration, result: Any, final: bool) -> None:
        outputs = {o.name for o in result.get_response().outputs}
        if "PROGRESS" in outputs:
            preview = result.as_numpy("PREVIEW") if "PREVIEW" in outputs else None
            generation.put_progress(result.as_numpy("PROGRESS"), preview)
        if not final:
            return
        worker = generation.worker
        if "ERROR" in outputs:
            error = decode_error(result.as_numpy("ERROR"))
            if isinstance(error, QueueFull) and not generation.cancelled:
                self._reroute(generation, error, failed=False)  # another worker may have room
                return
            self._release(generation)
            generation.finish(error, worker)
        elif "IMAGES" in outputs:
            self._release(generation)
            generation.succeed(result, worker)
        else:
            self._release(generation)
            generation.finish(EngineError("the worker ended the request without images or an error"), worker)

    # -- workers (HealthChecks calls these) ------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def connection(self, url: str) -> TritonConnection:
        return self.workers.connection(url)

    def knows(self, worker: WorkerState) -> bool:
        return self.workers.knows(worker)

    def set_discovered(self, urls: set[str]) -> None:
        for worker in self.workers.discovered(urls):
            self.workers.in_background(self._checks.check(worker))  # now, not at the next round

    def count_resolve(self, outcome: str) -> None:
        self.workers.resolves[outcome] += 1

    def triton_names(self) -> list[str]:
        return self._models.triton_names()

    def models_lost(self, worker: WorkerState, lost: set[str]) -> None:
        """Models no longer ready on a live worker: its requests for them go to another worker."""
        for generation in [g for g in self._pending.values() if g.worker is worker]:
            if generation.triton_name in lost:
                self._reroute(
                    generation, EngineDead(f"model {generation.triton_name} unloaded on {worker.url}")
                )

    def drop(self, worker: WorkerState, reason: str, kind: str = "health") -> None:
        """Eject a worker at once and move its requests to the others."""
        self.workers.eject(worker, kind, reason)
        cause = EngineDead(f"the Triton worker at {worker.url} failed ({reason}) and no other worker is live")
        for generation in [g for g in self._pending.values() if g.worker is worker]:
            self._reroute(generation, cause)
        self.workers.retire_if_idle(worker)
