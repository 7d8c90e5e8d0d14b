"""The variance head that L_vlb would teach, given the model's mean: a bound on what training the head buys.

The learned-range head is trained on the full T-step process (paper section 3.1, L_hybrid). For a fixed
mean, each step's L_vlb term is minimised by the KL-optimal weight frac*(t) that `variance_fit` measures on
the T-step process. Sampling with frac*(t) in place of the head's output therefore shows what learned-σ DDPM
would score with a head that can output any function of t, trained to convergence on this model's mean, and
the paper's claim (learned σ beats fixed σ as K shrinks) can be checked apart from what this network's head
learned (or, `head_refit`, could learn).

Only v is replaced: the mean (ε) is the network's own. The weight is looked up by the training step the
network sees, so respaced sampling transfers it exactly as it transfers a trained head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from service.diffusion.process import SpacedProcess, spaced_process
from service.diffusion.sampling import Denoiser
from service.model.store import LoadedModel
from service.quality.variance_fit import StepFit


def frac_curve(fits: Sequence[StepFit], num_timesteps: int) -> torch.Tensor:
    """[T] float32 weight per training step: piecewise linear through the fits, flat beyond the ends."""
    if not fits:
        raise ValueError("need at least one fitted step")
    ordered = sorted(fits, key=lambda f: f.timestep)
    knots = torch.tensor([f.timestep for f in ordered], dtype=torch.float64)
    values = torch.tensor([f.optimal_frac for f in ordered], dtype=torch.float64)
    if len(ordered) == 1:
        return values.expand(num_timesteps).float().clone()
    t = torch.arange(num_timesteps, dtype=torch.float64)
    right = torch.searchsorted(knots, t).clamp(1, len(knots) - 1)
    t0, t1 = knots[right - 1], knots[right]
    w = ((t - t0) / (t1 - t0)).clamp(0, 1)
    return (values[right - 1] + w * (values[right] - values[right - 1])).float()


class OptimalHead:
    """A Denoiser: the wrapped network's ε, and v = 2 frac*(t) − 1 for the training step t of each row."""

    def __init__(self, denoiser: Denoiser, frac: torch.Tensor, process: SpacedProcess) -> None:
        self.denoiser = denoiser
        self.frac = frac
        # Model timesteps are t, or t * 1000 / T when the model was trained with rescaled timesteps.
        self.scale = process.original_num_steps / 1000.0 if process.rescale_timesteps else 1.0

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps, v = self.denoiser(x_t, model_t, y)
        if v is None:
            raise ValueError("the model has no learned variance to replace")
        t = (model_t.double() * self.scale).round().long().clamp(0, len(self.frac) - 1)
        frac = self.frac.to(v.device)[t].to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
        return eps, (2 * frac - 1).expand_as(v)


def with_optimal_head(model: LoadedModel, fits: Sequence[StepFit]) -> LoadedModel:
    """The model with its head replaced by frac* fitted on the full T-step process (`fits`)."""
    process = spaced_process(model.manifest.diffusion)
    head = OptimalHead(model.denoiser, frac_curve(fits, process.num_timesteps), process)
    return dataclasses.replace(model, denoiser=head)
