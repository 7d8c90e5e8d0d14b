"""From a validated request body to a GenerationSpec: the server's published limits (num_images and
timeout_ms caps, stated in the OpenAPI schema too), the choice of K and seed. Checks against the model
(label range, K <= T, eta for this sampler...) are the engine's single GenerationSpec.validate, whose
InvalidRequest names the field; the API only maps it to HTTP."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from service.api.context import AppContext
from service.api.errors import ApiError, invalid
from service.api.schemas import GenerateRequest
from service.api.selection import (
    LatencyPredictor,
    StepChoice,
    choose_for_fid,
    choose_for_latency,
    least_loaded,
    point_at,
    require_calibrated,
)
from service.backends.base import GenerationSpec, ModelInfo
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
    if timeout_ms > settings.max_timeout_ms:
        raise invalid("timeout_ms", f"timeout_ms must be at most {settings.max_timeout_ms}, got {timeout_ms}")
    predictor = LatencyPredictor(
        context.metrics.tracker(info.name), least_loaded(context.backend.loads(), info.name), body.num_images
    )
    choice = choose_steps(body, info, context, predictor)
    seed = body.seed if body.seed is not None else secrets.randbits(SERVER_SEED_BITS)
    spec = GenerationSpec(
        model=info.name,
        class_label=body.class_label,
        steps=choice.steps,
        num_images=body.num_images,
        seed=seed,
        sampler=body.sampler,
        eta=body.eta,
        timeout_seconds=timeout_ms / 1000,
    )
    quality = point_at(info, body.sampler, choice.steps)
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
    if body.steps is not None:
        return StepChoice(body.steps, "steps")  # K <= T is checked by the engine with the model
    if body.max_fid is not None:
        return choose_for_fid(require_calibrated(info, body.sampler, "max_fid"), body.max_fid)
    if body.latency_budget_ms is not None:
        points = require_calibrated(info, body.sampler, "latency_budget_ms")
        return choose_for_latency(points, body.latency_budget_ms / 1000, predict)
    return StepChoice(min(context.settings.default_steps, info.num_timesteps), "default")
