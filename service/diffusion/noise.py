"""Where the z of each step comes from.

Each image owns its noise stream, so its trajectory does not depend on which other rows share its
batch (batch invariance). A row's i-th draw is the i-th draw of its own stream, whatever iteration of
the shared loop it happens in.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
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
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in self.generators]).to(
            dtype
        )

    def draw(self, rows: list[int], draw_index: list[int], like: torch.Tensor) -> torch.Tensor:
        # Drawn on the generators' device (CPU by default) and then moved: the same seed gives the
        # same image on any accelerator, and a row's stream never depends on the batch around it.
        shape = tuple(like.shape[1:])
        draws = [
            torch.randn(shape, generator=self.generators[r], device=self.generators[r].device) for r in rows
        ]
        return torch.stack(draws).to(device=like.device, dtype=like.dtype)


def image_seed(request_seed: int, image_index: int) -> int:
    """The seed of image `image_index` of a request: well mixed, so seeds s and s+1 share no stream.

    SeedSequence hashes (seed, index) into a 63-bit value; the result depends on nothing else, so an
    image is the same whether it was generated alone or as the 5th image of a batched request.
    """

    state = np.random.SeedSequence([int(request_seed) & (2**63 - 1), int(image_index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)
