"""The Triton workers the gateway knows: their routing state, their connections, and what happened to
them (joins, departures, ejections, re-resolves, re-sends), for /metrics and the logs.

Plain bookkeeping on the event loop; the backend decides what happens to requests. A worker's life:
- joins (a static URL at start, or a new address from discovery) not live; the health checks open its
  stream and make it live once the server is live and a served model is READY on it;
- is ejected (live = False, stream closed) when its stream breaks, it answers UNAVAILABLE, or its health
  checks fail; the health checks admit it again if it recovers;
- leaves (gone from discovery): draining, it takes no new request; it is forgotten, and its connection
  closed, once its last request has ended. Static URLs never leave.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from service.backends.base import BackendStartupError, FleetStats
from service.backends.triton.protocol import StreamEvent
from service.backends.triton.routing import Router, WorkerState

if TYPE_CHECKING:  # tritonclient is an optional dependency, imported at start()
    from service.backends.triton.connection import TritonConnection

log = logging.getLogger(__name__)

Connect = Callable[[str, Callable[[StreamEvent], None]], "TritonConnection"]


class Fleet:
    def __init__(self, urls: Sequence[str]) -> None:
        self.router = Router(urls)
        self.static = set(urls)
        self.connections: dict[str, TritonConnection] = {}
        self.ejections: Counter[str] = Counter()  # reason -> count
        self.resolves: Counter[str] = Counter()  # "ok" | "failed" -> count
        self.changes: Counter[str] = Counter()  # "joined" | "left" -> count
        self.resends = 0
        self._connect: Connect | None = None
        self._on_event: Callable[[StreamEvent], None] | None = None
        # The loop keeps only weak references to tasks: one nobody holds can vanish before it has run.
        self._tasks: set[asyncio.Task[None]] = set()

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the event loop, holding its task until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connect_all(self, connect: Connect, on_event: Callable[[StreamEvent], None]) -> None:
        self._connect, self._on_event = connect, on_event
        for worker in self.router.workers:
            self.connections[worker.url] = connect(worker.url, on_event)

    def connection(self, url: str) -> TritonConnection:
        return self.connections[url]

    def knows(self, worker: WorkerState) -> bool:
        return worker.url in self.connections and self.router.find(worker.url) is worker

    # -- membership -------------------------------------------------------------------------------

    def discovered(self, urls: set[str]) -> list[WorkerState]:
        """Apply one complete answer of discovery; returns the workers that joined."""
        joined = [self._join(url) for url in sorted(urls) if self.router.find(url) is None]
        for worker in list(self.router.workers):
            if worker.url in self.static:
                continue
            if worker.url in urls and worker.draining:
                worker.draining = False
                log.info("Triton worker %s is back in discovery", worker.url)
            elif worker.url not in urls and not worker.draining:
                worker.draining = True
                self.changes["left"] += 1
                log.info(
                    "Triton worker %s left discovery: draining (%d requests in flight)",
                    worker.url,
                    worker.outstanding,
                )
                self.retire_if_idle(worker)
        return joined

    def _join(self, url: str) -> WorkerState:
        assert self._connect is not None and self._on_event is not None, "connect_all first"
        worker = self.router.add(url)
        self.connections[url] = self._connect(url, self._on_event)
        self.changes["joined"] += 1
        log.info("Triton worker %s joined from discovery (health-checked before it gets work)", url)
        return worker

    def retire_if_idle(self, worker: WorkerState) -> None:
        """Forget a draining worker once nothing of ours runs on it."""
        if not worker.draining or worker.outstanding > 0 or not self.knows(worker):
            return
        self.router.remove(worker)
        worker.live = False
        connection = self.connections.pop(worker.url)
        self.in_background(asyncio.to_thread(connection.close))
        log.info("Triton worker %s drained and forgotten", worker.url)

    # -- failures ---------------------------------------------------------------------------------

    def eject(self, worker: WorkerState, kind: str, reason: str) -> None:
        """Out of rotation at once (the caller moves its requests); the health checks may admit it again."""
        log.warning("ejecting Triton worker %s (%s): %s", worker.url, kind, reason)
        self.ejections[kind] += 1
        worker.live = False
        worker.ready_models = set()
        connection = self.connections.get(worker.url)
        if connection is not None:
            self.in_background(asyncio.to_thread(connection.close))

    def stats(self) -> FleetStats:
        workers = self.router.workers
        return FleetStats(
            workers={
                "live": sum(1 for w in workers if w.live and not w.draining),
                "unready": sum(1 for w in workers if not w.live and not w.draining),
                "draining": sum(1 for w in workers if w.draining),
            },
            ejections=dict(self.ejections),
            resolves=dict(self.resolves),
            changes=dict(self.changes),
            resends=self.resends,
        )


def is_unavailable(error: Exception) -> bool:
    """Triton's UNAVAILABLE for one request: the server is shutting down or cannot serve the model now
    (after SIGTERM tritonserver 2.51 refuses new requests with "... has no available versions").
    tritonclient gives stream errors no status code, so the message is all there is to read."""
    text = str(error).lower()
    signs = ("unavailable", "no available versions", "shutting down", "server is stopping", "not ready")
    return any(sign in text for sign in signs)


def default_connect() -> Connect:
    try:
        from service.backends.triton.connection import TritonConnection
    except ImportError as e:
        raise BackendStartupError(
            f"the triton backend needs tritonclient: pip install 'ddpm-serve[triton]' ({e})"
        ) from e
    return TritonConnection
