"""The bare sampling loop: one generation, no scheduler, no batching with others.

`ddpm sample` uses it, and the benchmarks use it as the baseline the served path is compared to. It
validates through the same GenerationSpec.validate as the engine, so both refuse the same requests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.diffusion.config import VarianceType
from service.diffusion.noise import RowGenerators, image_seed
from service.diffusion.process import SpacedProcess
from service.diffusion.samplers import get_sampler
from service.diffusion.sampling import sample_rows
from service.engine.generation import GenerationSpec
from service.model.store import LoadedModel


def plan(model: LoadedModel, spec: GenerationSpec) -> SpacedProcess:
    """Validate the spec against the model and build its respaced process (raises InvalidRequest)."""
    spec.validate(model.manifest, has_gamma=model.gamma is not None)
    return get_sampler(spec.sampler).schedule(model.manifest.diffusion, spec.steps)


@torch.no_grad()
def sample(
    model: LoadedModel, spec: GenerationSpec, on_iteration: Callable[[int, torch.Tensor], None] | None = None
) -> torch.Tensor:
    """Images in [-1, 1], [num_images, C, H, W]; image i is seeded by image_seed(spec.seed, i)."""
    process = plan(model, spec)
    labels = None if spec.class_label is None else [spec.class_label] * spec.num_images
    seeds = [image_seed(spec.seed, i) for i in range(spec.num_images)]
    variance = spec.variance or model.manifest.diffusion.variance_type
    eta = spec.eta or 0.0
    return sample_batch(model, process, labels, seeds, spec.sampler, eta, variance, on_iteration)


@torch.no_grad()
def sample_batch(
    model: LoadedModel,
    process: SpacedProcess,
    labels: list[int] | None,
    seeds: list[int],
    sampler: str,
    eta: float,
    variance: VarianceType,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One batch of images of one process, each with its own label and RNG seed (already validated)."""
    manifest = model.manifest
    device = next(model.net.parameters()).device
    noise = RowGenerators(seeds, device="cpu")
    shape = (manifest.image_channels, manifest.image_size, manifest.image_size)
    x_T = noise.initial(shape).to(device)
    y = None if labels is None else torch.tensor(labels, dtype=torch.long, device=device)
    return sample_rows(
        model.denoiser,
        [process] * len(seeds),
        x_T,
        noise,
        y=y,
        sampler=sampler,
        variance_type=variance,
        eta=eta,
        on_iteration=on_iteration,
        gamma=model.gamma_per_step,
    )
