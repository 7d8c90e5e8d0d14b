"""`ddpm gamma`: Monte Carlo estimates of Gamma_t = E ||eps_theta(x_t, t)||^2 / d (for analytic variance).

Analytic-DPM (Bao et al., ICLR 2022; service.diffusion.analytic) needs, per training step t, the mean
squared norm per dimension of the network's noise prediction over the forward process: x0 from the data,
x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise. It is estimated at a grid of steps (0 and T-1
included) from `samples_per_step` draws each; GammaTable.per_step interpolates between them.

Each grid step draws its images and noise from its own generator, seeded from (seed, t): a step's estimate
depends neither on the grid around it nor on the batch size, and a denser grid adds steps without
changing the ones already there. Batches mix rows of several steps (the network takes one timestep per
row); the squared norms are summed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from service.diffusion.coefficients import coefficient_table, gather
from service.diffusion.prediction import q_sample
from service.diffusion.process import spaced_process
from service.model.gamma_table import GammaTable
from service.model.store import LoadedModel

Progress = Callable[[str, int], None]  # (phase description, network evaluations in this update)


def grid_timesteps(num_timesteps: int, count: int) -> list[int]:
    """`count` training steps evenly spaced from 0 to T-1, both included (rounded, duplicates dropped)."""
    if count < 2:
        raise ValueError(f"the grid needs at least 2 steps (0 and T-1), got {count}")
    last = num_timesteps - 1
    if count > last:
        return list(range(num_timesteps))
    return sorted({round(i * last / (count - 1)) for i in range(count)})


class _Rows(NamedTuple):
    x0: torch.Tensor  # [B, C, H, W]
    y: torch.Tensor  # [B] labels (zeros for an unconditional model)
    noise: torch.Tensor  # [B, C, H, W]
    t: torch.Tensor  # [B] training steps


def _cat(parts: Sequence[_Rows]) -> _Rows:
    return _Rows(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _draws(
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: Sequence[int],
    samples_per_step: int,
    seed: int,
    num_timesteps: int,
) -> Iterator[_Rows]:
    """The draws of each grid step in turn, each step from its own generator."""
    for t in timesteps:
        # Injective in (seed, t) for 0 <= t < T.
        g = torch.Generator().manual_seed(seed * num_timesteps + t)
        picks = torch.randint(0, len(images), (samples_per_step,), generator=g)
        noise = torch.randn((samples_per_step, *images.shape[1:]), generator=g)
        yield _Rows(images[picks], labels[picks], noise, torch.full((samples_per_step,), t, dtype=torch.long))


def eps_norm_samples(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    timesteps: Sequence[int],
    samples_per_step: int,
    seed: int = 0,
    batch_size: int = 250,
    progress: Progress | None = None,
) -> np.ndarray:
    """||eps_theta(x_t, t)||^2 / d of every draw: float64 [len(timesteps), samples_per_step].

    images: data in model space ([-1, 1], [N, C, H, W]); labels: their classes ([N], needed when the
    model is class-conditional, ignored otherwise); timesteps: training steps in 0..T-1."""
    manifest = model.manifest
    num_timesteps = manifest.diffusion.num_timesteps
    expected = (manifest.image_channels, manifest.image_size, manifest.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected or len(images) == 0:
        raise ValueError(
            f"the model takes images of shape [N, {', '.join(map(str, expected))}], got {list(images.shape)}"
        )
    conditional = manifest.num_classes is not None
    if conditional and (labels is None or len(labels) != len(images)):
        raise ValueError("the model is class-conditional: pass one label per image")
    if samples_per_step < 1 or batch_size < 1:
        raise ValueError("samples_per_step and batch_size must be >= 1")
    if not timesteps or any(not 0 <= t < num_timesteps for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list of steps in 0..{num_timesteps - 1}")
    device = next(model.net.parameters()).device
    table = coefficient_table(spaced_process(manifest.diffusion), device)  # row t: training step t
    y_pool = (
        labels.long() if conditional and labels is not None else torch.zeros(len(images), dtype=torch.long)
    )
    values: list[np.ndarray] = []

    @torch.no_grad()
    def run(rows: _Rows) -> None:
        c = gather(table, rows.t.to(device))
        x0 = rows.x0.to(device=device, dtype=torch.float32)
        x_t = q_sample(x0, rows.noise.to(device=device, dtype=torch.float32), c)
        eps, _ = model.denoiser(x_t, c.model_t, rows.y.to(device) if conditional else None)
        values.append(eps.double().pow(2).flatten(1).mean(dim=1).cpu().numpy())
        if progress is not None:
            progress("Gamma", len(rows.t))

    pending: list[_Rows] = []
    count = 0
    for draws in _draws(images, y_pool, timesteps, samples_per_step, seed, num_timesteps):
        pending.append(draws)
        count += samples_per_step
        while count >= batch_size:  # full batches, rows of several steps mixed
            rows = _cat(pending)
            run(_Rows(*(column[:batch_size] for column in rows)))
            pending = [_Rows(*(column[batch_size:] for column in rows))]
            count -= batch_size
    if count:
        run(_cat(pending))
    # Draws are evaluated in the order they were made: draw j of grid step i is row i * S + j.
    return np.concatenate(values).reshape(len(timesteps), samples_per_step)


def table_from_norms(
    model: LoadedModel, timesteps: Sequence[int], norms: np.ndarray, seed: int, data: str
) -> GammaTable:
    """The Gamma table of per-draw values `norms` ([len(timesteps), samples_per_step])."""
    return GammaTable(
        timesteps=tuple(int(t) for t in timesteps),
        gamma=tuple(float(g) for g in norms.mean(axis=1)),
        num_timesteps=model.manifest.diffusion.num_timesteps,
        samples_per_step=norms.shape[1],
        seed=seed,
        data=data,
    )


def estimate_gamma(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    grid: int = 256,
    samples_per_step: int = 64,
    seed: int = 0,
    batch_size: int = 250,
    progress: Progress | None = None,
    data: str | None = None,
) -> GammaTable:
    """The model's Gamma table: the mean of ||eps||^2 / d at `grid` steps evenly spaced over 0..T-1.

    `data` describes where the images came from, for the record (default: their count)."""
    timesteps = grid_timesteps(model.manifest.diffusion.num_timesteps, grid)
    norms = eps_norm_samples(model, images, labels, timesteps, samples_per_step, seed, batch_size, progress)
    return table_from_norms(
        model, timesteps, norms, seed, data if data is not None else f"{len(images)} images"
    )


def standard_errors(norms: np.ndarray) -> np.ndarray:
    """Standard error of each step's mean from its per-draw values ([steps, samples], samples >= 2)."""
    if norms.shape[1] < 2:
        raise ValueError("a standard error needs at least 2 samples per step")
    return np.asarray(norms.std(axis=1, ddof=1) / np.sqrt(norms.shape[1]))
