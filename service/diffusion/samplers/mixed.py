"""One reverse step for a batch whose rows may each use their own sampler (continuous batching).

Rows are grouped by sampler; each group runs its sampler's step on its own rows (every step is
elementwise per row, so a row gets what it would get alone) and the results are put back in batch order.
A batch of one sampler, the common case, runs without any gathering.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.diffusion.coefficients import RowCoefficients
from service.diffusion.samplers.base import RowOptions, RowState, Sampler, StepOutput


def mixed_step(
    samplers: Sequence[Sampler],
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    c: RowCoefficients,
    noise: torch.Tensor,
    options: RowOptions,
    state: RowState,
) -> StepOutput:
    """Row i steps with samplers[i]; `state` holds every state tensor any of the samplers declares."""
    groups: dict[str, list[int]] = {}
    for i, sampler in enumerate(samplers):
        groups.setdefault(sampler.name, []).append(i)
    by_name = {s.name: s for s in samplers}
    if len(groups) == 1:
        return by_name[next(iter(groups))].step(x_t, eps, v, c, noise, options, state)
    x_prev = torch.empty_like(x_t)
    pred_xstart = torch.empty_like(x_t)
    new_state = {name: tensor.clone() for name, tensor in state.items()}
    for name, rows in groups.items():
        index = torch.tensor(rows, dtype=torch.long, device=x_t.device)
        sub = by_name[name].step(
            x_t[index],
            eps[index],
            None if v is None else v[index],
            RowCoefficients(*(column[index] for column in c)),
            noise[index],
            _options_of(options, rows, index),
            {key: tensor[index] for key, tensor in state.items()},
        )
        x_prev[index] = sub.x_prev
        pred_xstart[index] = sub.pred_xstart
        for key, tensor in sub.state.items():
            new_state[key][index] = tensor
    return StepOutput(x_prev, pred_xstart, new_state)


def _options_of(options: RowOptions, rows: list[int], index: torch.Tensor) -> RowOptions:
    return RowOptions(
        eta=options.eta[index.to(options.eta.device)],
        variance=tuple(options.variance[i] for i in rows),
        clip_denoised=options.clip_denoised,
    )
