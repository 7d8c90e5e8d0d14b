"""The sampler variants compared in calibration (paper Figure 8): names users type, and what they run.

Read from the sampler registry: every registered sampler with the model's own variance (learned when the
model has it), and for samplers whose steps use Sigma_theta, one variant per fixed variance as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.diffusion.config import VarianceType
from service.diffusion.samplers import SAMPLERS


@dataclass(frozen=True)
class SamplerKind:
    name: str
    sampler: str  # a name in service.diffusion.samplers.SAMPLERS
    variance: VarianceType
    eta: float = 0.0


def _kinds() -> dict[str, SamplerKind]:
    kinds = {name: SamplerKind(name, name, VarianceType.LEARNED_RANGE) for name in SAMPLERS}
    for sampler in SAMPLERS.values():
        if sampler.uses_variance:
            for variance in (VarianceType.FIXED_SMALL, VarianceType.FIXED_LARGE):
                # "fixed-small" for the default sampler (the names tradeoff.json has always used).
                prefix = "" if sampler.name == "ddpm" else f"{sampler.name}-"
                name = prefix + variance.value.replace("_", "-")
                kinds[name] = SamplerKind(name, sampler.name, variance)
    return kinds


SAMPLER_KINDS = _kinds()


def sampler_kind(name: str) -> SamplerKind:
    try:
        return SAMPLER_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_KINDS)}") from None
