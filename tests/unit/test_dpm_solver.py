"""DPM-Solver++(2M) (service.diffusion.multistep, samplers/dpm_solver.py) against an independent
implementation: Hugging Face diffusers' DPMSolverMultistepScheduler, configured as the same method
(data prediction, second-order midpoint, first-order first and last step, last step to sigma = 0, no
thresholding).

Both sides run the same network function of (x_t, training step) over the same training steps from the
same x_T, and must end at the same samples up to float32 rounding. The service feeds the network its
model timesteps (rescaled when the model was trained so); the toy network maps them back to training steps,
so both sides call one and the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from service.diffusion.config import DiffusionConfig, LossType
from service.diffusion.multistep import SPACINGS, dpm_solver_process, dpm_solver_timesteps
from service.diffusion.noise import RowGenerators
from service.diffusion.process import SpacedProcess
from service.diffusion.sampling import sample_rows
from service.diffusion.schedules import named_betas

SHAPE = (3, 8, 8)
DATA_STD = 0.5  # the toy network's idea of the data: N(0, DATA_STD^2 I)
SEEDS = [11, 12, 13, 14]  # one row each

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # eps(x_t [B, ...], training step [B])


def _config(schedule: str, num_timesteps: int, rescale_timesteps: bool) -> DiffusionConfig:
    return DiffusionConfig(schedule, num_timesteps, False, rescale_timesteps, LossType.MSE)  # type: ignore[arg-type]


# The tiny test model's settings (cosine, T = 1000), and a linear T = 4000 model trained on rescaled
# timesteps (the network sees t * 1000 / T, floats).
CONFIGS = {
    "cosine-1000": _config("cosine", 1000, False),
    "linear-4000-rescaled": _config("linear", 4000, True),
}


class ToyNetwork:
    """A deterministic eps(x, t) that behaves like a trained network, t being the training step.

    It is the exact noise prediction for data N(0, s^2 I), sigma_t x / (alpha_bar_t s^2 + sigma_t^2), plus
    a nonlinear error: alpha_t * 0.3 * tanh(W x + t / T) with a fixed random W. The error is nonlinear so
    that the solver's second-order term matters, and scaled by alpha_t so that the x0 prediction
    (x - sigma_t eps) / alpha_t stays bounded near t = T, as a trained network's does. Computed in float64
    from the float32 input and returned as float32.
    """

    def __init__(self, config: DiffusionConfig, seed: int = 0) -> None:
        self.num_timesteps = config.num_timesteps
        betas = named_betas(config.noise_schedule, config.num_timesteps)
        self.alpha_bar = torch.from_numpy(np.cumprod(1.0 - betas))
        dim = math.prod(SHAPE)
        generator = torch.Generator().manual_seed(seed)
        self.mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, *SHAPE] float32; t: [B] int64 training steps."""
        alpha_bar = self.alpha_bar[t].view(-1, 1)
        flat = x.double().flatten(1)
        exact = torch.sqrt(1 - alpha_bar) * flat / (alpha_bar * DATA_STD**2 + 1 - alpha_bar)
        phase = t.view(-1, 1) / self.num_timesteps
        error = 0.3 * torch.sqrt(alpha_bar) * torch.tanh(flat @ self.mixing + phase)
        return (exact + error).float().view_as(x)


def training_steps(process: SpacedProcess, model_t: torch.Tensor) -> torch.Tensor:
    """Each row's training step, from the model timestep sample_rows gave the network (model_timesteps)."""
    fed = torch.from_numpy(process.model_timesteps)
    k = torch.argmin((model_t.view(-1, 1) - fed.view(1, -1)).abs(), dim=1)
    assert torch.equal(fed[k], model_t), "the network was fed a timestep the process does not have"
    return torch.from_numpy(process.timestep_map)[k]


def ours(network: Network, process: SpacedProcess, x_T: torch.Tensor) -> torch.Tensor:
    """The service's loop: sampler dpm++2m, no clipping of the x0 prediction (diffusers has none either)."""

    def denoise(
        x: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return network(x, training_steps(process, model_t)), None

    noise = RowGenerators(SEEDS)  # drawn by the loop, never used by a deterministic sampler
    processes = [process] * len(x_T)
    return sample_rows(denoise, processes, x_T, noise, sampler="dpm++2m", clip_denoised=False)


def diffusers_scheduler(config: DiffusionConfig) -> DPMSolverMultistepScheduler:
    """DPM-Solver++(2M) as the service runs it: the model's own betas, eps prediction, midpoint 2nd order,
    lower-order final step to sigma = 0, no thresholding (`timestep_spacing` keeps its "linspace" default)."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=config.num_timesteps,
        trained_betas=named_betas(config.noise_schedule, config.num_timesteps).tolist(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=False,
    )


def theirs(network: Network, scheduler: DPMSolverMultistepScheduler, x_T: torch.Tensor) -> torch.Tensor:
    """diffusers' loop over the timesteps already set on `scheduler`, the whole batch at one t."""
    x = x_T.clone()
    for t in scheduler.timesteps:
        eps = network(x, t.repeat(len(x)))
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_ten_steps_end_where_diffusers_ends(name: str, spacing: str) -> None:
    """The final samples of a K = 10 trajectory match diffusers' to 1e-4 (or to float32's floor where that
    is higher, see rounding_floor), for both spacings. Time-uniform steps come from diffusers' own linspace
    spacing; log-SNR-uniform ones are handed to it as custom timesteps (it has no such spacing for a
    discrete schedule)."""
    config = CONFIGS[name]
    steps = 10
    process = dpm_solver_process(config, steps, spacing)
    network = ToyNetwork(config)
    x_T = RowGenerators(SEEDS).initial(SHAPE)

    scheduler = diffusers_scheduler(config)
    if spacing == "time-uniform":
        scheduler.set_timesteps(num_inference_steps=steps)
    else:
        scheduler.set_timesteps(timesteps=process.timestep_map[::-1].tolist())
    assert scheduler.timesteps.tolist() == process.timestep_map[::-1].tolist()

    mine, reference = ours(network, process, x_T), theirs(network, scheduler, x_T)
    assert mine.abs().max() > 0.5  # samples, not something collapsed to zero
    assert (mine - reference).abs().max().item() < max(1e-4, 3 * rounding_floor(network, scheduler, x_T))


def rounding_floor(network: Network, scheduler: DPMSolverMultistepScheduler, x_T: torch.Tensor) -> float:
    """How far diffusers' own final samples move when every eps moves up by one float32 ulp.

    Two float32 implementations cannot agree more closely than this. It is about 1e-6 except where the
    first step starts at t = 999 of the cosine T = 1000 schedule: alpha_t = 5e-5 there (the last beta is
    clipped to 0.999), so x0 = (x - sigma_t eps) / alpha_t magnifies eps's rounding 2e4 times, and the
    floor is about 4e-4.
    """

    def nudged(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = network(x, t)
        return torch.nextafter(eps, torch.full_like(eps, math.inf))

    scheduler.set_timesteps(timesteps=scheduler.timesteps.tolist())  # the same steps, solver state reset
    again = theirs(network, scheduler, x_T)
    scheduler.set_timesteps(timesteps=scheduler.timesteps.tolist())
    return (theirs(nudged, scheduler, x_T) - again).abs().max().item()


@pytest.mark.parametrize("num_timesteps", [1000, 4000])
@pytest.mark.parametrize("steps", [10, 25, 50])
def test_time_uniform_steps_are_diffusers_linspace_steps(num_timesteps: int, steps: int) -> None:
    """Spacing "time-uniform" is exactly diffusers' timestep_spacing="linspace" grid (ascending here)."""
    config = _config("cosine", num_timesteps, False)
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(num_inference_steps=steps)
    assert dpm_solver_timesteps(config, steps, "time-uniform") == sorted(scheduler.timesteps.tolist())


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_k_gets_k_distinct_steps(spacing: str) -> None:
    """Any K from 1 to T-1 is a valid request: where rounding puts two steps on one training step (the
    steep ends of the cosine schedule, or many steps), they are moved apart, never dropped."""
    config = _config("cosine", 4000, False)
    for steps in (*range(1, 120), 500, 2000, 3999):
        kept = dpm_solver_timesteps(config, steps, spacing)
        assert len(kept) == steps and kept == sorted(set(kept)) and kept[0] >= 1 and kept[-1] <= 3999, steps
