"""Coefficient tables per step budget, cached (bounded) and shared by submit-time checks and the executor.

Tables stay on the CPU as float32 numpy arrays: each iteration the executor gathers one table row per
active image (its own K, its own position) and sends the [n, C] block to the device in one copy, which
costs less than keeping a stacked table on the device and restacking it whenever the set of K changes.
The values are those of service.diffusion.coefficients.coefficient_table, so rows match the solo path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.diffusion.coefficients import coefficient_table
from service.diffusion.config import DiffusionConfig
from service.diffusion.process import SpacedProcess, process_at
from service.diffusion.samplers import DEFAULT_SAMPLER, get_sampler

TIMESTEP_CACHE = 512  # schedules kept for re-planning searches (a few KiB each at T = 4000)


@dataclass(frozen=True)
class StepTable:
    steps: int | str
    num_steps: int  # K after respacing (a respacing string may keep fewer steps than it names)
    table: np.ndarray  # float32 [K, len(COLUMNS)], row k = respaced step k
    timesteps: np.ndarray  # int64 [K]: the training step of respaced step k (the process's timestep_map)


class StepTables:
    """A thread-safe LRU of StepTable by (the sampler's schedule, `steps`). Running rows keep their own
    reference, so eviction never pulls a table from under a row; the bound only limits what is kept for
    future requests. `gamma` (the model's Gamma_t table, if it has one) fills the analytic columns."""

    def __init__(self, config: DiffusionConfig, capacity: int = 64, gamma: np.ndarray | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.config = config
        self.capacity = capacity
        self.gamma = gamma
        self._tables: OrderedDict[tuple[str, int | str], StepTable] = OrderedDict()
        self._timesteps: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, steps: int | str, sampler: str = DEFAULT_SAMPLER) -> StepTable:
        """The table of a step budget for a sampler; raises RespacingError (a ValueError) for an
        impossible budget and UnknownSampler (a ValueError) for an unknown sampler."""
        chosen = get_sampler(sampler)
        key = (chosen.schedule_name, steps)
        with self._lock:
            cached = self._tables.get(key)
            if cached is not None:
                self._tables.move_to_end(key)
                return cached
        # Built outside the lock: T = 4000 takes about a millisecond, and two threads building the
        # same table at once only waste that.
        table = self._build(chosen.schedule(self.config, steps), steps)
        with self._lock:
            self._tables[key] = table
            self._tables.move_to_end(key)
            while len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        return table

    def timesteps(self, steps: int, sampler: str) -> np.ndarray:
        """The training steps a sampler's K-step schedule visits (re-planning searches over K; these
        are kept apart from the tables, so a search does not evict the tables requests use)."""
        chosen = get_sampler(sampler)
        key = (chosen.schedule_name, steps)
        with self._lock:
            cached = self._timesteps.get(key)
            if cached is not None:
                self._timesteps.move_to_end(key)
                return cached
        timesteps = chosen.schedule(self.config, steps).timestep_map
        with self._lock:
            self._timesteps[key] = timesteps
            while len(self._timesteps) > TIMESTEP_CACHE:
                self._timesteps.popitem(last=False)
        return timesteps

    def at(self, kept: Sequence[int]) -> StepTable:
        """The table of the process visiting exactly `kept` (a re-planned row's combined schedule);
        not cached: each re-plan's schedule is its own."""
        return self._build(process_at(self.config, kept), len(kept))

    def _build(self, process: SpacedProcess, steps: int | str) -> StepTable:
        coefficients = coefficient_table(process, "cpu", self.gamma).numpy()
        return StepTable(steps, process.num_timesteps, coefficients, process.timestep_map)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables)
