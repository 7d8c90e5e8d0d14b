"""EnginePool: one Engine per CUDA device (one CPU engine when there is none) for one model.

Routing is per request (all rows of a group go to one engine, so they batch together and cancel finds
them): the ready engine with the smallest queue depth + in-flight rows; an engine still warming up or
restarting its executor gets requests only when none is ready. Readiness: every engine has finished its
first warm-up and at least one is ready now (a GPU whose executor is being rebuilt does not take the
whole service out of rotation).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence

import torch

from service.engine.core import DoneCallback, ProgressCallback
from service.engine.engine import Engine
from service.engine.errors import EngineDead, QueueFull
from service.engine.observer import EngineObserver
from service.engine.request import Request
from service.engine.scheduler import Load
from service.engine.settings import EngineSettings
from service.model.store import LoadedModel


def serving_devices() -> list[torch.device]:
    """Every visible CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


class EnginePool:
    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("a pool needs at least one engine")
        self.engines = list(engines)

    @classmethod
    def create(
        cls,
        load_model: Callable[[torch.device], LoadedModel],
        settings: EngineSettings | None = None,
        observer: EngineObserver | None = None,
        devices: Sequence[torch.device] | None = None,
    ) -> EnginePool:
        """`load_model(device)` is called once per device: each engine owns its copy of the network
        (precision casts and compilation mutate it). Engines are not started."""
        engines = [
            Engine(load_model(device), settings, device=device, observer=observer, name=str(device))
            for device in (devices or serving_devices())
        ]
        return cls(engines)

    @property
    def model_name(self) -> str:
        return self.engines[0].core.model.name

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for every engine's first warm-up (they warm up in parallel)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for engine in self.engines:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            engine.wait_ready(left)
        return self.ready

    @property
    def ready(self) -> bool:
        warming = [e for e in self.engines if e.alive and e.core.warm_ups == 0]
        return not warming and any(engine.ready for engine in self.engines)

    def submit(
        self,
        requests: Sequence[Request],
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str:
        """Queue one request's rows on the least-loaded engine; returns that engine's name.

        Raises what Engine.submit raises; QueueFull only when every engine's queue is full.
        """
        candidates = [engine for engine in self.engines if engine.alive]
        if not candidates:
            raise EngineDead(f"no engine of model {self.model_name!r} is running")
        candidates.sort(key=lambda engine: (not engine.ready, engine.load().total))
        full: list[QueueFull] = []
        for engine in candidates:
            try:
                engine.submit(requests, on_done, on_progress)
                return engine.name
            except QueueFull as e:
                full.append(e)
        raise min(full, key=lambda e: e.retry_after)

    def cancel(self, group_id: str) -> int:
        return sum(engine.cancel(group_id) for engine in self.engines)

    def loads(self) -> dict[str, Load]:
        return {engine.name: engine.load() for engine in self.engines}

    def memory_bytes(self) -> dict[str, int]:
        """Per engine: CUDA memory allocated by torch on its device, or the process's RSS on the CPU."""
        return {engine.name: _memory_bytes(engine.core.device) for engine in self.engines}

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop every engine (they drain in parallel: all are told first, then each is joined)."""
        for engine in self.engines:
            engine.begin_stop(drain)
        for engine in self.engines:
            engine.stop(drain=drain, timeout=timeout)


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # No /proc: the peak RSS (KiB on Linux-likes) is the best figure the standard library has.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
