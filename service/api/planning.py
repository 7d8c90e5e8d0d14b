"""From a validated request body to a GenerationSpec: the checks that need the model or the settings
(label range, K <= T, num_images cap...) and the choice of K and seed. Every failure names its field."""

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


def plan_generation(body: GenerateRequest, context: AppContext) -> Plan:
    info = find_model(context, body.model)
    _check_label(info, body.class_label)
    settings = context.settings
    if body.num_images > settings.max_num_images:
        raise invalid(
            "num_images", f"num_images must be at most {settings.max_num_images}, got {body.num_images}"
        )
    if body.eta is not None and body.sampler != "ddim":
        raise invalid("eta", "eta applies to sampler 'ddim' only; remove it or set sampler to 'ddim'")
    timeout_ms = body.timeout_ms or settings.default_timeout_ms
    if timeout_ms > settings.max_timeout_ms:
        raise invalid("timeout_ms", f"timeout_ms must be at most {settings.max_timeout_ms}, got {timeout_ms}")
    choice = choose_steps(body, info, context)
    seed = body.seed if body.seed is not None else secrets.randbits(SERVER_SEED_BITS)
    spec = GenerationSpec(
        model=info.name,
        class_label=body.class_label,
        steps=choice.steps,
        num_images=body.num_images,
        seed=seed,
        sampler=body.sampler,
        eta=body.eta or 0.0,
        timeout_seconds=timeout_ms / 1000,
    )
    quality = point_at(info, body.sampler, choice.steps)
    return Plan(info, spec, choice, body.seed is None, quality)


def find_model(context: AppContext, name: str | None, field: str = "model") -> ModelInfo:
    name = name if name is not None else context.default_model
    if name is None or name not in context.models:
        served = ", ".join(context.models) or "none yet (starting)"
        raise ApiError(404, "model_not_found", f"{field}: no model named {name!r}; served: {served}", field)
    return context.models[name]


def choose_steps(body: GenerateRequest, info: ModelInfo, context: AppContext) -> StepChoice:
    T = info.num_timesteps
    if body.steps is not None:
        if body.steps > T:
            raise invalid(
                "steps", f"steps must be between 1 and T={T} for model {info.name!r}, got {body.steps}"
            )
        return StepChoice(body.steps, "steps")
    if body.max_fid is not None:
        return choose_for_fid(require_calibrated(info, body.sampler, "max_fid"), body.max_fid)
    if body.latency_budget_ms is not None:
        points = require_calibrated(info, body.sampler, "latency_budget_ms")
        load = least_loaded(context.backend.loads(), info.name)
        predict = LatencyPredictor(context.metrics.tracker(info.name), load, body.num_images)
        return choose_for_latency(points, body.latency_budget_ms / 1000, predict)
    return StepChoice(min(context.settings.default_steps, T), "default")


def _check_label(info: ModelInfo, class_label: int | None) -> None:
    if info.num_classes is None:
        if class_label is not None:
            raise invalid("class_label", f"model {info.name!r} is unconditional: omit class_label")
        return
    if class_label is None:
        raise invalid(
            "class_label",
            f"model {info.name!r} is class-conditional: give class_label (0..{info.num_classes - 1})",
        )
    if class_label >= info.num_classes:
        raise invalid(
            "class_label", f"class_label must be between 0 and {info.num_classes - 1}, got {class_label}"
        )
