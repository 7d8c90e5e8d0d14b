"""Which Triton workers can take requests: every `interval` seconds, per worker, the server is live and
which of the served models are READY on it.

A worker is dropped after FAILED_CHECKS_TO_DROP failed checks in a row (the backend also drops one at
once when its stream breaks), and is live again once a check passes and its stream opens. A model that is
no longer ready on a live worker sends that worker's requests for it to another.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from service.backends.triton.routing import Router, WorkerState

if TYPE_CHECKING:  # tritonclient is an optional dependency, imported at start()
    from service.backends.triton.connection import TritonConnection

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
FAILED_CHECKS_TO_DROP = 2  # one slow answer on a busy host is not a dead worker; a broken stream is


class _Backend(Protocol):
    router: Router

    @property
    def stopping(self) -> bool: ...

    def connection(self, url: str) -> TritonConnection: ...

    def knows(self, worker: WorkerState) -> bool: ...

    def triton_names(self) -> list[str]: ...

    def drop(self, worker: WorkerState, reason: str, kind: str) -> None: ...

    def models_lost(self, worker: WorkerState, lost: set[str]) -> None: ...


class HealthChecks:
    def __init__(self, backend: _Backend, interval: float = HEALTH_INTERVAL_S) -> None:
        self.backend = backend
        self.interval = interval
        # One check per worker at a time: a worker that joins is checked at once and may also be in a
        # round; two checks opening its stream would close each other's. A second caller awaits the first.
        self._checking: dict[WorkerState, asyncio.Future[None]] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_all()
            except Exception:  # the loop must survive anything one check does
                log.exception("Triton health check failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(worker) for worker in self.backend.router.workers))

    async def check(self, worker: WorkerState) -> None:
        if not self.backend.knows(worker):  # forgotten (drained) since the round began
            return
        running = self._checking.get(worker)
        if running is None:
            running = asyncio.ensure_future(self._check(worker))
            self._checking[worker] = running
            running.add_done_callback(lambda _: self._checking.pop(worker, None))
        await asyncio.shield(running)  # a waiter that is cancelled leaves the check running

    async def _check(self, worker: WorkerState) -> None:
        backend = self.backend
        connection = backend.connection(worker.url)
        names = backend.triton_names()
        try:
            ready: set[str] = await asyncio.to_thread(connection.check, names, HEALTH_TIMEOUT_S)
        except Exception as e:
            worker.failed_checks += 1
            if worker.live and worker.failed_checks >= FAILED_CHECKS_TO_DROP:
                backend.drop(worker, f"health checks failed: {e}", "health")
            return
        worker.failed_checks = 0
        if not backend.knows(worker):  # forgotten while the check ran: its connection is closed
            return
        if not worker.live and ready and not backend.stopping:
            try:
                await asyncio.to_thread(connection.open)
            except Exception as e:
                log.warning("cannot open a stream to Triton at %s: %s", worker.url, e)
                return
            worker.live = True
            log.info("Triton at %s is live (models ready: %s)", worker.url, ", ".join(sorted(ready)))
        lost = worker.ready_models - ready
        worker.ready_models = ready
        if lost:
            backend.models_lost(worker, lost)
