"""The sampler variants compared in calibration (paper Figure 8): names users type, and what they run."""

from __future__ import annotations

from dataclasses import dataclass

from service.diffusion.config import VarianceType
from service.diffusion.sampling import Sampler


@dataclass(frozen=True)
class SamplerKind:
    name: str
    sampler: Sampler
    variance: VarianceType
    eta: float = 0.0


SAMPLER_KINDS = {
    "ddpm": SamplerKind("ddpm", Sampler.DDPM, VarianceType.LEARNED_RANGE),
    "ddim": SamplerKind("ddim", Sampler.DDIM, VarianceType.LEARNED_RANGE, eta=0.0),
    "fixed-small": SamplerKind("fixed-small", Sampler.DDPM, VarianceType.FIXED_SMALL),
    "fixed-large": SamplerKind("fixed-large", Sampler.DDPM, VarianceType.FIXED_LARGE),
}


def sampler_kind(name: str) -> SamplerKind:
    try:
        return SAMPLER_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_KINDS)}") from None
