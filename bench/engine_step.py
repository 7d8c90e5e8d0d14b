"""One engine iteration vs one raw forward at the same batch, in this process, alternating.

Locates a served-throughput gap: the iteration (schedule, gather, network through the bucket runner,
mixed reverse step, finiteness check, scatter) is compared with the bare network call, alternating in
small groups so that other processes on the shared core slow both alike, and on CPU time as well as wall
time. Without HTTP, the server process or its threads, what is left is the engine's own cost per step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.ceiling import RESCALED_T
from service.engine.core import EngineCore
from service.engine.generation import GenerationSpec
from service.engine.settings import EngineSettings
from service.model.store import LoadedModel


@dataclass(frozen=True)
class EngineStep:
    batch: int
    samples: int
    raw_cpu_s: float  # medians
    step_cpu_s: float
    raw_wall_s: float
    step_wall_s: float

    @property
    def cpu_ratio(self) -> float:
        """Raw forward ÷ engine iteration on CPU time: the share of an iteration that is the network."""
        return self.raw_cpu_s / self.step_cpu_s


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


@torch.no_grad()
def measure(model: LoadedModel, batch: int, rounds: int = 8, per_round: int = 5) -> EngineStep:
    core = EngineCore(model, EngineSettings(max_batch=batch))  # fp32 eager on the CPU: shares the net safely
    core.start_executor()
    steps = model.manifest.diffusion.num_timesteps  # enough steps that no row finishes while measured
    label = 0 if model.manifest.num_classes else None
    core.submit(GenerationSpec(model.name, label, steps, batch), "engine-step")
    generator = torch.Generator().manual_seed(0)
    m = model.manifest
    x = torch.randn((batch, m.image_channels, m.image_size, m.image_size), generator=generator)
    t = torch.rand(batch, generator=generator) * RESCALED_T
    y = torch.randint(0, m.num_classes or 1, (batch,), generator=generator) if m.num_classes else None
    for _ in range(3):
        model.denoiser(x, t, y)
        core.step()
    raw: list[tuple[float, float]] = []
    step: list[tuple[float, float]] = []
    for _ in range(rounds):
        raw += [_timed(lambda: model.denoiser(x, t, y)) for _ in range(per_round)]
        step += [_timed(core.step) for _ in range(per_round)]
    assert core.load().in_flight == batch, "a row finished or was dropped while being measured"
    return EngineStep(
        batch=batch,
        samples=len(raw),
        raw_cpu_s=statistics.median(c for _, c in raw),
        step_cpu_s=statistics.median(c for _, c in step),
        raw_wall_s=statistics.median(w for w, _ in raw),
        step_wall_s=statistics.median(w for w, _ in step),
    )
