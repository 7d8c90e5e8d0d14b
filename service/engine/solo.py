"""The bare sampling loop: one request, no scheduler, no batching with others.

`ddpm sample` uses it, and the benchmarks use it as the baseline the served path is compared to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.diffusion.config import VarianceType
from service.diffusion.noise import RowGenerators, image_seed
from service.diffusion.process import SpacedProcess, spaced_process
from service.diffusion.respacing import RespacingError
from service.diffusion.sampling import Sampler, sample_rows
from service.model.store import LoadedModel


class SampleRequestError(ValueError):
    """Arguments that cannot describe a sampling run of this model; the message says what to change."""


@dataclass(frozen=True)
class SampleSpec:
    class_label: int | None
    steps: int | str
    num_images: int = 1
    seed: int = 0
    sampler: Sampler = Sampler.DDPM
    eta: float = 0.0
    variance: VarianceType | None = None  # None: the model's own (learned range for learned sigma)


def validate(spec: SampleSpec, model: LoadedModel) -> None:
    manifest = model.manifest
    num_timesteps = manifest.diffusion.num_timesteps
    if isinstance(spec.steps, int) and not 1 <= spec.steps <= num_timesteps:
        raise SampleRequestError(
            f"steps must be between 1 and T={num_timesteps} for this model, got {spec.steps}"
        )
    if manifest.num_classes is None and spec.class_label is not None:
        raise SampleRequestError(f"model {manifest.name!r} is unconditional: omit the class label")
    if manifest.num_classes is not None:
        if spec.class_label is None:
            raise SampleRequestError(f"model {manifest.name!r} is class-conditional: give a class label")
        if not 0 <= spec.class_label < manifest.num_classes:
            raise SampleRequestError(
                f"class label must be between 0 and {manifest.num_classes - 1}, got {spec.class_label}"
            )
    if spec.num_images < 1:
        raise SampleRequestError(f"num_images must be >= 1, got {spec.num_images}")
    if not 0.0 <= spec.eta <= 1.0:
        raise SampleRequestError(f"eta must be between 0 and 1, got {spec.eta}")
    if spec.variance is VarianceType.LEARNED_RANGE and not manifest.diffusion.learn_sigma:
        raise SampleRequestError("this model has no learned variance: use fixed-small or fixed-large")
    if manifest.architecture.kind == "superres":
        raise SampleRequestError(
            "super-resolution models need a low-resolution input; sampling them is unsupported"
        )


def plan(model: LoadedModel, spec: SampleSpec) -> SpacedProcess:
    """Validate the spec against the model and build its respaced process (raises SampleRequestError)."""
    validate(spec, model)
    try:
        return spaced_process(model.manifest.diffusion, spec.steps)
    except RespacingError as e:
        raise SampleRequestError(str(e)) from None


@torch.no_grad()
def sample(
    model: LoadedModel, spec: SampleSpec, on_iteration: Callable[[int, torch.Tensor], None] | None = None
) -> torch.Tensor:
    """Images in [-1, 1], [num_images, C, H, W]; image i is seeded by image_seed(spec.seed, i)."""
    process = plan(model, spec)
    labels = None if spec.class_label is None else [spec.class_label] * spec.num_images
    seeds = [image_seed(spec.seed, i) for i in range(spec.num_images)]
    variance = spec.variance or model.manifest.diffusion.variance_type
    return sample_batch(model, process, labels, seeds, spec.sampler, spec.eta, variance, on_iteration)


@torch.no_grad()
def sample_batch(
    model: LoadedModel,
    process: SpacedProcess,
    labels: list[int] | None,
    seeds: list[int],
    sampler: Sampler,
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
    )
