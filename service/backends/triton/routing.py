"""Which Triton worker takes a request: least outstanding work among the live workers that have the
model ready. Plain Python (no tritonclient, no asyncio): the backend calls it on its event loop only.

Outstanding work is counted here, at the gateway, rather than read from each worker's metrics: the count
is exact for this gateway's own traffic and needs no round trip. It is counted in row-steps (K x images,
a request's whole cost, known when it is sent) rather than in requests, so that a worker holding K=100
requests is not taken for as free as one holding as many K=10 ones. With several gateways each balances
its own share, which evens out the workers' load as well.

Membership changes while serving (discovery): a worker joins not live (the health checks admit it), and
one that leaves is marked draining: it takes no new request and is forgotten once its last one ends.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class WorkerState:
    """One Triton URL as the gateway sees it."""

    url: str
    live: bool = False  # the last health check passed and the stream is open
    ready_models: set[str] = field(default_factory=set)  # Triton model names READY on it
    outstanding: int = 0  # requests sent and not yet answered
    outstanding_images: int = 0
    outstanding_steps: int = 0  # row-steps of those requests (K x images)
    failed_checks: int = 0  # consecutive failed health checks
    draining: bool = False  # gone from discovery: no new requests, its own ones finish
    sent: int = 0  # requests sent to it, ever

    def serves(self, model: str) -> bool:
        return self.live and not self.draining and model in self.ready_models

    def assign(self, images: int, steps: int) -> None:
        self.sent += 1
        self.outstanding += 1
        self.outstanding_images += images
        self.outstanding_steps += steps

    def unassign(self, images: int, steps: int) -> None:
        self.outstanding -= 1
        self.outstanding_images -= images
        self.outstanding_steps -= steps


class Router:
    def __init__(self, urls: Iterable[str] = ()) -> None:
        self.workers = [WorkerState(url) for url in urls]
        self._turn = 0  # round robin among equally loaded workers, so idle ones share the first requests

    def choose(self, model: str, exclude: Collection[WorkerState] = ()) -> WorkerState | None:
        """The live worker with `model` ready and the least outstanding row-steps (then requests); None when
        no worker other than `exclude` can take it."""
        candidates = [w for w in self.workers if w.serves(model) and w not in exclude]
        if not candidates:
            return None
        count = len(self.workers)
        self._turn = (self._turn + 1) % count
        order = {id(w): (i - self._turn) % count for i, w in enumerate(self.workers)}
        return min(candidates, key=lambda w: (w.outstanding_steps, w.outstanding, order[id(w)]))

    def worker(self, url: str) -> WorkerState:
        return next(w for w in self.workers if w.url == url)

    def find(self, url: str) -> WorkerState | None:
        return next((w for w in self.workers if w.url == url), None)

    def add(self, url: str) -> WorkerState:
        worker = WorkerState(url)
        self.workers.append(worker)
        return worker

    def remove(self, worker: WorkerState) -> None:
        self.workers.remove(worker)

    def serving(self, model: str) -> list[WorkerState]:
        return [w for w in self.workers if w.serves(model)]

    @property
    def live(self) -> list[WorkerState]:
        return [w for w in self.workers if w.live]
