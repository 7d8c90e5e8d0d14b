"""One reverse step for a batch whose rows may each use DDPM or DDIM and their own variance type.

The math is service.diffusion's, row for row: p_mean_variance, then ddpm_step or ddim_step. Both are
elementwise per row, so computing a step for the whole batch and selecting per row gives each row what
service.diffusion.sampling.reverse_step gives it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.diffusion.coefficients import RowCoefficients, per_row
from service.diffusion.config import VarianceType
from service.diffusion.prediction import model_log_variance, p_mean_variance
from service.diffusion.steps import ddim_step, ddpm_step


def mixed_reverse_step(
    eps: torch.Tensor,
    v: torch.Tensor | None,
    x_t: torch.Tensor,
    c: RowCoefficients,
    noise: torch.Tensor,
    ddim: Sequence[bool],
    eta: torch.Tensor,
    variance: Sequence[VarianceType],
    clip_denoised: bool = True,
) -> torch.Tensor:
    """x_{t-1} of every row; `ddim`, `eta` ([B] float32) and `variance` are per row."""
    kinds = list(dict.fromkeys(variance))
    out = p_mean_variance(eps, v, x_t, c, kinds[0], clip_denoised)
    if len(kinds) > 1:
        log_variance = out.log_variance
        for kind in kinds[1:]:
            rows = _row_mask([vt is kind for vt in variance], x_t)
            log_variance = torch.where(rows, model_log_variance(kind, v, x_t, c)[1], log_variance)
        out = out._replace(variance=torch.exp(log_variance), log_variance=log_variance)
    if all(ddim):
        return ddim_step(x_t, out, noise, c, eta)
    if not any(ddim):
        return ddpm_step(out, noise, c)
    return torch.where(
        _row_mask(list(ddim), x_t), ddim_step(x_t, out, noise, c, eta), ddpm_step(out, noise, c)
    )


def _row_mask(flags: list[bool], like: torch.Tensor) -> torch.Tensor:
    return per_row(torch.tensor(flags, device=like.device), like)


def finite_rows(*tensors: torch.Tensor | None) -> torch.Tensor:
    """[B] bool: True where every element of the row is finite in every tensor given."""
    ok: torch.Tensor | None = None
    for tensor in tensors:
        if tensor is None:
            continue
        row_ok = torch.isfinite(tensor).flatten(1).all(dim=1)
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None, "finite_rows needs at least one tensor"
    return ok
