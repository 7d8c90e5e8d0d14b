"""What every sampler is: one reverse step with one signature, and the per-row state it carries.

A step takes the network's outputs for a batch of rows (each at its own t of its own K, see
service.diffusion.coefficients) and returns each row's x_{t-1}. Samplers that need more than x_t between
steps (multistep solvers keep earlier predictions) declare the names of those per-row tensors in `state`;
the caller keeps them per row (the engine in its slots) and passes them back at the next step, so rows of
different samplers and K can share a batch and each row's trajectory depends only on its own inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from service.diffusion.coefficients import RowCoefficients
from service.diffusion.config import DiffusionConfig, VarianceType
from service.diffusion.process import SpacedProcess, spaced_process

RowState = Mapping[str, torch.Tensor]  # per-row tensors a sampler carries between steps, [B, ...] each


@dataclass(frozen=True)
class RowOptions:
    """Per-row sampler options of a batch; each sampler reads the ones it uses."""

    eta: torch.Tensor  # [B] float32: DDIM's noise scale
    variance: tuple[VarianceType, ...]  # [B]: how Sigma_theta is obtained (ancestral samplers)
    clip_denoised: bool = True


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # x_{t-1} of every row
    pred_xstart: torch.Tensor  # the x_0 prediction the step used (previews, trajectories)
    state: dict[str, torch.Tensor]  # the rows' new state (empty for samplers that keep none)


StepFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None, RowCoefficients, torch.Tensor, RowOptions, RowState],
    StepOutput,
]
"""step(x_t, eps, v, c, noise, options, state) -> StepOutput: one reverse step of every row."""

Schedule = Callable[[DiffusionConfig, "int | str"], SpacedProcess]
"""schedule(config, steps) -> the process of K steps the sampler runs (raises RespacingError)."""


@dataclass(frozen=True)
class Sampler:
    name: str  # what requests, the CLI, calibration and metric labels call it
    description: str  # one line for the API schema and the CLI help
    step: StepFn
    uses_eta: bool = False  # the request's eta means something to this sampler
    uses_variance: bool = False  # the request's variance type (learned / fixed-small / fixed-large) does
    state: tuple[str, ...] = field(default=())  # per-row tensors (shaped like x) kept between steps
    # Which training steps K steps visit: the paper's respacing unless the sampler has its own choice.
    # Tables are cached per (schedule_name, steps), so samplers with one schedule share them.
    schedule: Schedule = spaced_process
    schedule_name: str = "respaced"
