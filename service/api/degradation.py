"""What a request ran, as opposed to what it asked (load-adaptive budgets, service.engine.degrade), in the
terms the response, its headers and the metrics use."""

from __future__ import annotations

from dataclasses import dataclass

from service.api.fallbacks import estimated_fid
from service.api.planning import Plan
from service.api.schemas import DegradationInfo
from service.backends.base import SAMPLERS, GenerationResult
from service.diffusion.config import VarianceType
from service.quality.sampler_kinds import kind_name


@dataclass(frozen=True)
class AsRun:
    steps: int
    sampler: str
    variance: str | None  # ddpm's variance type as run (the model's own when none was named); else None
    kind: str  # the sampler variant (tradeoff.json's `sampler`, the metrics' label)

    @classmethod
    def of(cls, result: GenerationResult | None, plan: Plan) -> AsRun:
        """As planned when `result` is None or ran as asked."""
        degradation = None if result is None else result.degradation
        if degradation is None:
            steps, sampler, variance = plan.steps, plan.spec.sampler, plan.spec.variance
        else:
            steps, sampler, variance = max(degradation.steps_used), degradation.sampler, degradation.variance
        return cls(steps, sampler, _variance_name(plan, sampler, variance), kind_name(sampler, variance))


def _variance_name(plan: Plan, sampler: str, variance: VarianceType | None) -> str | None:
    if not SAMPLERS[sampler].uses_variance:
        return None
    return str(variance or plan.info.manifest.diffusion.variance_type)


def calibrated_fid(result: GenerationResult, plan: Plan) -> float | None:
    """tradeoff.json's FID of what ran (interpolated in log K for an uncalibrated K); None when the
    variant has no calibrated points around that K."""
    ran = AsRun.of(result, plan)
    return estimated_fid(plan.info, ran.kind, ran.steps)


def degradation_info(result: GenerationResult, plan: Plan) -> DegradationInfo:
    degradation = result.degradation
    assert degradation is not None, "only for a degraded result"
    asked = kind_name(plan.spec.sampler, plan.spec.variance)
    ran = AsRun.of(result, plan)
    replanned = [at for at in degradation.replanned_at if at is not None]
    why = {
        "deadline": "the asked K would have ended after the deadline at the current load",
        "queue": "work was queued behind it",
        "replanned": f"after {min(replanned, default=0)} steps the load rose (its deadline came at risk, "
        "or work queued behind it), so the rest of its schedule was made coarser",
    }[str(degradation.reason)]
    return DegradationInfo(
        reason=degradation.reason.value,
        message=f"asked {asked} K={plan.steps}, ran {ran.kind} K={ran.steps}: {why}",
        steps_asked=plan.steps,
        sampler_asked=asked,
        steps_used=list(degradation.steps_used),
        replanned_at=list(degradation.replanned_at),
        fid_asked=estimated_fid(plan.info, asked, plan.steps),
        fid_used=estimated_fid(plan.info, ran.kind, ran.steps),
    )
