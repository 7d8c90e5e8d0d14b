"""Many samples of one (sampler, K) for calibration: class-balanced labels, one seed per image."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from service.diffusion.noise import image_seed
from service.diffusion.samplers import get_sampler
from service.engine.solo import sample_batch
from service.model.store import LoadedModel
from service.quality.sampler_kinds import SamplerKind


def balanced_labels(count: int, num_classes: int) -> list[int]:
    """0, 1, ..., C-1, 0, 1, ...: every class equally often (to within one)."""
    return [i % num_classes for i in range(count)]


def generate(
    model: LoadedModel,
    kind: SamplerKind,
    steps: int,
    count: int,
    seed: int = 0,
    batch_size: int = 250,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images [-1, 1] [N, C, H, W] on the CPU, labels [N], seconds of sampling per image).

    Image i uses image_seed(seed, i), the same seed whatever K or sampler, so columns of a grid and
    points of the trade-off curve differ only by the step budget.
    """
    num_classes = model.manifest.num_classes
    labels = balanced_labels(count, num_classes) if num_classes else None
    process = get_sampler(kind.sampler).schedule(model.manifest.diffusion, steps)
    images = []
    started = time.perf_counter()
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        seeds = [image_seed(seed, i) for i in range(start, stop)]
        batch_labels = None if labels is None else labels[start:stop]
        images.append(
            sample_batch(model, process, batch_labels, seeds, kind.sampler, kind.eta, kind.variance).cpu()
        )
        if on_batch is not None:
            on_batch(stop - start)
    seconds = time.perf_counter() - started
    label_tensor = torch.tensor(labels if labels is not None else [-1] * count)
    return torch.cat(images), label_tensor, seconds / count
