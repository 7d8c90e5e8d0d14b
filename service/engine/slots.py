"""Preallocated per-slot state of one executor: latents on the device, RNG and schedule on the CPU.

A row keeps its slot from admission to its last step, so its latents never move; each iteration
gathers the active slots by index instead of filtering parallel lists.

Noise is drawn on the CPU, per row, from the row's own torch.Generator seeded with
image_seed(seed, image_index), and then moved to the device. This is what makes an image independent of
its batch and of the accelerator: a row's k-th draw is the k-th draw of its own stream whoever shares the
iteration, and the CPU generator gives the same numbers on every machine (CUDA generators do not match
the CPU's, nor the solo path's). The draws are small ([C, H, W] per row); their copy to the device is
one non-blocking transfer per iteration (transfers.py), made while the network runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.diffusion.coefficients import RowCoefficients
from service.diffusion.config import VarianceType
from service.diffusion.noise import image_seed
from service.diffusion.samplers import RowOptions, Sampler, get_sampler
from service.engine.request import RowState
from service.engine.tables import StepTable
from service.engine.transfers import Transfers


@dataclass
class SlotInfo:
    owner: RowState
    generator: torch.Generator
    table: np.ndarray  # the row's coefficient table (float32 [K, C]); indexed by the row's cursor
    timesteps: np.ndarray  # the training step of each table row (what a re-plan starts from)
    label: int
    sampler: Sampler
    eta: float
    variance: VarianceType


class SlotTable:
    def __init__(
        self, num_slots: int, shape: tuple[int, ...], device: torch.device, transfers: Transfers | None = None
    ) -> None:
        self.shape = shape
        self.device = device
        self.transfers = transfers or Transfers(device)
        self.latents = torch.zeros((num_slots, *shape), dtype=torch.float32, device=device)
        # What samplers carry between steps (service.diffusion.samplers.base), one [slots, *shape] tensor
        # per declared name, allocated when the first row of such a sampler is admitted.
        self.state: dict[str, torch.Tensor] = {}
        self.info: list[SlotInfo | None] = [None] * num_slots

    def admit(self, row: RowState, table: StepTable, variance: VarianceType) -> None:
        """Seed the row's stream and draw x_T (the stream's first draw, as the solo path does)."""
        assert row.slot is not None, "a row is admitted into a slot by the scheduler first"
        request = row.request
        generator = torch.Generator(device="cpu").manual_seed(image_seed(request.seed, request.image_index))
        self.latents[row.slot] = self.transfers.upload_tensor(torch.randn(self.shape, generator=generator))
        row.draws = 1
        sampler = get_sampler(request.sampler)
        for name in sampler.state:
            if name not in self.state:
                self.state[name] = torch.zeros_like(self.latents)
            self.state[name][row.slot] = 0.0
        self.info[row.slot] = SlotInfo(
            owner=row,
            generator=generator,
            table=table.table,
            timesteps=table.timesteps,
            label=request.class_label or 0,
            sampler=sampler,
            eta=float(request.eta),
            variance=variance,
        )

    def replace_table(self, row: RowState, table: StepTable) -> None:
        """A re-planned row's new schedule (its latents, stream and sampler state stay)."""
        info = self.rows_info([row])[0]
        info.table, info.timesteps = table.table, table.timesteps

    def release(self, row: RowState) -> None:
        if row.slot is not None and (info := self.info[row.slot]) is not None and info.owner is row:
            self.info[row.slot] = None

    def rows_info(self, rows: Sequence[RowState]) -> list[SlotInfo]:
        infos = []
        for row in rows:
            info = None if row.slot is None else self.info[row.slot]
            assert info is not None, f"row {row.request.request_id} has no admitted slot"
            infos.append(info)
        return infos

    def coefficients(self, rows: Sequence[RowState], infos: Sequence[SlotInfo]) -> RowCoefficients:
        """Each row's coefficients at its own cursor, gathered on the CPU and sent in one copy."""
        block = np.stack([info.table[row.cursor] for row, info in zip(rows, infos, strict=True)])
        return RowCoefficients(*self.transfers.upload(block, torch.float32).unbind(dim=1))

    def noise(self, infos: Sequence[SlotInfo]) -> torch.Tensor:
        """The next draw of every row's stream, [n, C, H, W] on the device (see the module docstring)."""
        draws = [torch.randn(self.shape, generator=info.generator) for info in infos]
        return self.transfers.upload_tensor(torch.stack(draws))

    def labels(self, infos: Sequence[SlotInfo]) -> torch.Tensor:
        return self.transfers.upload([info.label for info in infos], torch.long)

    def options(self, infos: Sequence[SlotInfo]) -> RowOptions:
        eta = self.transfers.upload([info.eta for info in infos], torch.float32)
        return RowOptions(eta, tuple(info.variance for info in infos))

    def samplers_state(self, infos: Sequence[SlotInfo], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state tensors the rows' samplers declare, gathered for the rows (slot order `index`)."""
        names = {name for info in infos for name in info.sampler.state}
        return {name: self.state[name].index_select(0, index) for name in names}
