"""From a validated request body to a GenerationSpec: the server's published limits (num_images and
timeout_ms caps, stated in the OpenAPI schema too), the choice of K and seed. Checks against the model
(label range, K <= T, eta for this sampler...) are the engine's single GenerationSpec.validate, whose
InvalidRequest names the field; the API only maps it to HTTP."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

from service.api.context import AppContext
from service.api.errors import ApiError, invalid
from service.api.fallbacks import fallbacks_for
from service.api.schemas import AUTO_SAMPLER, GenerateRequest, SamplerMode, SelectionMode
from service.api.selection import (
    LatencyPredictor,
    StepChoice,
    choose_auto,
    choose_for_fid,
    choose_for_latency,
    least_loaded,
    point_at,
    require_calibrated,
    require_frontier,
)
from service.backends.base import DEFAULT_SAMPLER, GenerationSpec, ModelInfo
from service.quality.sampler_kinds import kind_name, sampler_kind
from service.quality.tradeoff import TradeoffPoint

SERVER_SEED_BITS = 32  # server-chosen seeds stay exact in JSON clients that read numbers as doubles


@dataclass(frozen=True)
class Plan:
    info: ModelInfo
    spec: GenerationSpec
    choice: StepChoice
    seed_chosen_by_server: bool
    quality: TradeoffPoint | None  # calibrated quality at the chosen K, if measured
    # The step-time model's prediction for the chosen K (no margin), compared with what the request took
    # to learn the margin latency budgets are scaled by; None before the model has measured a step.
    predicted_seconds: float | None = None

    @property
    def steps(self) -> int:
        """K as chosen (the API only ever sends an integer K, never a respacing string)."""
        return self.choice.steps


def plan_generation(body: GenerateRequest, context: AppContext) -> Plan:
    info = find_model(context, body.model)
    settings = context.settings
    if body.num_images > settings.max_num_images:
        raise invalid(
            "num_images", f"num_images must be at most {settings.max_num_images}, got {body.num_images}"
        )
    timeout_ms = body.timeout_ms or settings.default_timeout_ms
    if not settings.min_timeout_ms <= timeout_ms <= settings.max_timeout_ms:
        raise invalid(
            "timeout_ms",
            f"timeout_ms must be between {settings.min_timeout_ms} and {settings.max_timeout_ms}, "
            f"got {timeout_ms}",
        )
    budget = body.latency_budget_ms
    if budget is not None and budget < settings.min_latency_budget_ms:
        message = f"latency_budget_ms must be at least {settings.min_latency_budget_ms:g}, got {budget:g}"
        raise invalid("latency_budget_ms", message)
    predictor = LatencyPredictor(
        context.metrics.tracker(info.name), least_loaded(context.backend.loads(), info.name), body.num_images
    )
    choice = choose_steps(body, info, context, predictor)
    kind = sampler_kind(choice.kind or DEFAULT_SAMPLER)
    seed = body.seed if body.seed is not None else secrets.randbits(SERVER_SEED_BITS)
    spec = GenerationSpec(
        model=info.name,
        class_label=body.class_label,
        steps=choice.steps,
        num_images=body.num_images,
        seed=seed,
        sampler=kind.sampler,
        eta=body.eta,
        variance=kind.request_variance,
        timeout_seconds=timeout_ms / 1000,
        fallbacks=fallbacks_for(body, info, choice, kind.name),
        preview_every=body.preview_every,
    )
    quality = point_at(info, kind.name, choice.steps)
    return Plan(info, spec, choice, body.seed is None, quality, predictor.base(choice.steps))


def find_model(context: AppContext, name: str | None, field: str = "model") -> ModelInfo:
    name = name if name is not None else context.default_model
    if name is None or name not in context.models:
        served = ", ".join(context.models) or "none yet (starting)"
        raise ApiError(404, "model_not_found", f"{field}: no model named {name!r}; served: {served}", field)
    return context.models[name]


def choose_steps(
    body: GenerateRequest, info: ModelInfo, context: AppContext, predict: LatencyPredictor
) -> StepChoice:
    """K and the sampler variant: what the request names, else chosen (see service.api.selection)."""
    named = requested_kind(body)
    if body.steps is not None or (body.max_fid is None and body.latency_budget_ms is None):
        steps = (
            body.steps if body.steps is not None else min(context.settings.default_steps, info.num_timesteps)
        )
        mode: SelectionMode = "steps" if body.steps is not None else "default"
        if body.sampler == AUTO_SAMPLER:
            return dataclasses.replace(choose_auto(info, steps), mode=mode)
        if named is not None:
            return StepChoice(steps, mode, kind=named, reason=f"sampler {named} named by the request")
        reason = f"no sampler named: {DEFAULT_SAMPLER} with the model's own variance (the paper's method)"
        return StepChoice(steps, mode, kind=DEFAULT_SAMPLER, sampler_mode="default", reason=reason)
    field = "max_fid" if body.max_fid is not None else "latency_budget_ms"
    sampler_mode: SamplerMode = "request" if named is not None else "frontier"
    # No sampler named (or auto): the frontier across every calibrated variant.
    points = require_calibrated(info, named, field) if named is not None else require_frontier(info, field)
    if body.max_fid is not None:
        choice = choose_for_fid(points, body.max_fid)
    else:
        assert body.latency_budget_ms is not None
        choice = choose_for_latency(points, body.latency_budget_ms / 1000, predict)
    return dataclasses.replace(choice, sampler_mode=sampler_mode)


def requested_kind(body: GenerateRequest) -> str | None:
    """The sampler variant the request names (sampler and/or variance), None when it names none."""
    if body.sampler == AUTO_SAMPLER:
        if body.variance is not None:
            raise invalid(
                "variance", "sampler auto chooses the variance too: omit variance, or name the sampler"
            )
        if body.eta is not None:
            raise invalid("eta", "sampler auto chooses the sampler: omit eta, or set sampler to ddim")
        return None
    if body.sampler is None and body.variance is None:
        if body.eta is not None:
            raise invalid("eta", "eta applies to sampler 'ddim' only: set sampler to 'ddim', or remove eta")
        return None
    sampler = body.sampler or DEFAULT_SAMPLER
    if body.variance is not None and sampler != DEFAULT_SAMPLER:
        raise invalid("variance", f"variance applies to sampler {DEFAULT_SAMPLER!r} only; remove it")
    return kind_name(sampler, body.variance)
