"""Coefficient tables per step budget, cached (bounded) and shared by submit-time checks and the executor.

Tables stay on the CPU as float32 numpy arrays: each iteration the executor gathers one table row per
active image (its own K, its own position) and sends the [n, C] block to the device in one copy, which
costs less than keeping a stacked table on the device and restacking it whenever the set of K changes.
The values are those of service.diffusion.coefficients.coefficient_table, so rows match the solo path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from service.diffusion.coefficients import coefficient_table
from service.diffusion.config import DiffusionConfig
from service.diffusion.process import spaced_process


@dataclass(frozen=True)
class StepTable:
    steps: int | str
    num_steps: int  # K after respacing (a respacing string may keep fewer steps than it names)
    table: np.ndarray  # float32 [K, len(COLUMNS)], row k = respaced step k


class StepTables:
    """A thread-safe LRU of StepTable by `steps`. Running rows keep their own reference, so eviction
    never pulls a table from under a row; the bound only limits what is kept for future requests."""

    def __init__(self, config: DiffusionConfig, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.config = config
        self.capacity = capacity
        self._tables: OrderedDict[int | str, StepTable] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, steps: int | str) -> StepTable:
        """The table of a step budget; raises RespacingError (a ValueError) for an impossible one."""
        with self._lock:
            cached = self._tables.get(steps)
            if cached is not None:
                self._tables.move_to_end(steps)
                return cached
        # Built outside the lock: T = 4000 takes about a millisecond, and two threads building the
        # same table at once only waste that.
        process = spaced_process(self.config, steps)
        table = StepTable(steps, process.num_timesteps, coefficient_table(process, "cpu").numpy())
        with self._lock:
            self._tables[steps] = table
            self._tables.move_to_end(steps)
            while len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        return table

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables)
