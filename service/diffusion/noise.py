"""Where the z of each step comes from.

Each image owns its noise stream, so its trajectory does not depend on which other rows share its
batch (batch invariance). A row's i-th draw is the i-th draw of its own stream, whatever iteration of
the shared loop it happens in.
"""

from __future__ import annotations

from typing import Protocol

import torch


class NoiseSource(Protocol):
    def draw(self, rows: list[int], draw_index: list[int], like: torch.Tensor) -> torch.Tensor:
        """Noise for `rows` (batch positions), each at its own draw number, shaped like `like`."""
        ...


class RowGenerators:
    """One torch.Generator per row, seeded by the caller (the request's seed and image index)."""

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def initial(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T for every row: the first draw of each row's stream."""
        return torch.stack(
            [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in self.generators]
        )

    def draw(self, rows: list[int], draw_index: list[int], like: torch.Tensor) -> torch.Tensor:
        shape = tuple(like.shape[1:])
        return torch.stack(
            [
                torch.randn(shape, generator=self.generators[r], device=like.device, dtype=like.dtype)
                for r in rows
            ]
        )


class NoiseBank:
    """Pre-drawn noise, bank[i] being the i-th draw of every row (the golden vectors' convention)."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank

    def draw(self, rows: list[int], draw_index: list[int], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.bank[i, r] for r, i in zip(rows, draw_index, strict=True)]).to(like)
