"""The sampler variants compared in calibration and chosen between by the API: names users type, and
what they run.

Read from the sampler registry: every registered sampler with the model's own variance (learned when the
model has it), and for samplers whose steps use Sigma_theta, one variant per other variance type:
fixed-small, fixed-large and analytic (Analytic-DPM, needs the model's gamma.json). These names are the
`sampler` of every tradeoff.json point and the `sampler` label of the metrics; a request names the same
variant as (sampler, variance), see `kind_name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.diffusion.config import VarianceType
from service.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS

OTHER_VARIANCES = (VarianceType.FIXED_SMALL, VarianceType.FIXED_LARGE, VarianceType.ANALYTIC)


@dataclass(frozen=True)
class SamplerKind:
    name: str
    sampler: str  # a name in service.diffusion.samplers.SAMPLERS
    variance: VarianceType
    eta: float = 0.0

    @property
    def needs_gamma(self) -> bool:
        return self.variance is VarianceType.ANALYTIC and SAMPLERS[self.sampler].uses_variance

    @property
    def request_variance(self) -> VarianceType | None:
        """The `variance` a request gives to run this kind: None for the model's own."""
        if not SAMPLERS[self.sampler].uses_variance or self.variance is VarianceType.LEARNED_RANGE:
            return None
        return self.variance


def kind_name(sampler: str, variance: VarianceType | str | None) -> str:
    """The kind a request runs: "ddpm" + fixed_small -> "fixed-small"; samplers that ignore the
    variance (and the model's own variance, None) keep the sampler's name."""
    if variance is None or not SAMPLERS[sampler].uses_variance:
        return sampler
    variance = VarianceType(variance)
    if variance is VarianceType.LEARNED_RANGE:
        return sampler
    # "fixed-small" for the default sampler (the names tradeoff.json has always used).
    prefix = "" if sampler == DEFAULT_SAMPLER else f"{sampler}-"
    return prefix + variance.value.replace("_", "-")


def _kinds() -> dict[str, SamplerKind]:
    kinds = {name: SamplerKind(name, name, VarianceType.LEARNED_RANGE) for name in SAMPLERS}
    for sampler in SAMPLERS.values():
        if sampler.uses_variance:
            for variance in OTHER_VARIANCES:
                name = kind_name(sampler.name, variance)
                kinds[name] = SamplerKind(name, sampler.name, variance)
    return kinds


SAMPLER_KINDS = _kinds()
KIND_NAMES = tuple(SAMPLER_KINDS)


def sampler_kind(name: str) -> SamplerKind:
    try:
        return SAMPLER_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_KINDS)}") from None
