"""EnginePool: one Engine per serving device (service.engine.devices) for one model.

Routing is per generation (all rows of a group go to one engine, so they batch together and cancel finds
them): the ready engine with the smallest queue depth + in-flight rows; an engine still warming up or
restarting its executor gets requests only when none is ready. Readiness: every engine has finished its
first warm-up and at least one is ready now (a GPU whose executor is being rebuilt does not take the
whole service out of rotation). The pool uses only the Engine façade.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from service.engine.core import DoneCallback, ProgressCallback
from service.engine.devices import serving_devices
from service.engine.engine import Engine
from service.engine.errors import EngineDead, QueueFull
from service.engine.generation import GenerationSpec
from service.engine.observer import EngineObserver
from service.engine.scheduler import Load
from service.engine.settings import EngineSettings
from service.model.store import LoadedModel


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
        return self.engines[0].model_name

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
        warming = [e for e in self.engines if e.alive and not e.warmed_up]
        return not warming and any(engine.ready for engine in self.engines)

    @property
    def alive(self) -> bool:
        return any(engine.alive for engine in self.engines)

    def submit(
        self,
        spec: GenerationSpec,
        group_id: str,
        on_done: DoneCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str:
        """Queue one generation on the least-loaded engine; returns that engine's name.

        Raises what Engine.submit raises; QueueFull only when every engine's queue is full.
        """
        candidates = [engine for engine in self.engines if engine.alive]
        if not candidates:
            raise EngineDead(f"no engine of model {self.model_name!r} is running")
        candidates.sort(key=lambda engine: (not engine.ready, engine.load().total))
        full: list[QueueFull] = []
        for engine in candidates:
            try:
                engine.submit(spec, group_id, on_done, on_progress)
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
        return {engine.name: engine.memory_bytes() for engine in self.engines}

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop every engine (they drain in parallel: all are told first, then each is joined)."""
        for engine in self.engines:
            engine.begin_stop(drain)
        for engine in self.engines:
            engine.stop(drain=drain, timeout=timeout)
