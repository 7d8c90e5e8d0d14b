"""Per-row coefficient tables: what makes a batch of rows with different K and positions possible.

A process's float64 arrays are cast once to a float32 table [K, C] on the device (the reference indexes
its float64 arrays with t and casts to float32 at every call; casting the whole array first gives the
same numbers). Tables of several processes are stacked, and each row of a batch gathers its own row of
the stacked table, so the step math below never assumes a shared t or K.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from service.diffusion.process import SpacedProcess


class RowCoefficients(NamedTuple):
    """Coefficients for each row of a batch, each of shape [B] (float32)."""

    model_t: torch.Tensor
    nonzero_mask: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    log_betas: torch.Tensor
    fixed_large_variance: torch.Tensor
    fixed_large_log_variance: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    # DPM-Solver++(2M) (service.diffusion.multistep): x_next = dpm_x_coef x + dpm_x0_coef D, with
    # D = dpm_w_cur x0_now + dpm_w_prev x0_before.
    dpm_x_coef: torch.Tensor
    dpm_x0_coef: torch.Tensor
    dpm_w_cur: torch.Tensor
    dpm_w_prev: torch.Tensor
    # Analytic-DPM's Sigma (service.diffusion.analytic); NaN when the model has no Gamma table.
    analytic_variance: torch.Tensor
    analytic_log_variance: torch.Tensor


COLUMNS = RowCoefficients._fields
PROCESS_COLUMNS = COLUMNS[2 : COLUMNS.index("dpm_x_coef")]  # arrays of SpacedProcess by the same name


def coefficient_table(
    process: SpacedProcess, device: torch.device | str | None = None, gamma: np.ndarray | None = None
) -> torch.Tensor:
    """Float32 table [K, len(COLUMNS)]; row k holds every coefficient of respaced step k.

    `gamma` is the model's Gamma_t = E||eps_theta(x_t, t)||^2 / d for t = 0..T-1 (analytic variance);
    without it the analytic columns are NaN, so a row that used them by mistake could not pass the
    engine's finiteness check."""
    # Imported here: both modules build on RowCoefficients, defined above.
    from service.diffusion.analytic import analytic_variance
    from service.diffusion.multistep import dpm_solver_columns

    k = process.num_timesteps
    arrays: dict[str, np.ndarray] = {
        "model_t": process.model_timesteps,
        "nonzero_mask": (np.arange(k) != 0).astype(np.float64),
    }
    for name in PROCESS_COLUMNS:
        arrays[name] = getattr(process, name)
    arrays.update(dpm_solver_columns(process))
    variance = np.full(k, np.nan) if gamma is None else analytic_variance(process, gamma)
    arrays["analytic_variance"] = variance
    with np.errstate(divide="ignore", invalid="ignore"):
        arrays["analytic_log_variance"] = np.log(variance)
    stacked = np.stack([np.asarray(arrays[name], dtype=np.float64) for name in COLUMNS], axis=1)
    # model_t is already float32; every other column is float64 cast once, as the reference casts per call.
    return torch.from_numpy(stacked).to(dtype=torch.float32, device=device)


def stack_tables(tables: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """One table for several processes, and the row offset of each (row of step k = offset + k)."""
    offsets, total = [], 0
    for table in tables:
        offsets.append(total)
        total += table.shape[0]
    return torch.cat(tables, dim=0), offsets


def gather(table: torch.Tensor, rows: torch.Tensor) -> RowCoefficients:
    """Coefficients of table rows `rows` ([B] int64 indices into a possibly stacked table)."""
    return RowCoefficients(*table.index_select(0, rows).unbind(dim=1))


def per_row(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a [B] coefficient over the remaining dimensions of `like` ([B, C, H, W])."""
    return coefficient.view(-1, *([1] * (like.dim() - 1)))
