"""The OpenAPI schema with the server's limits in it, so a request valid by the published schema is never
refused for a limit the schema did not state.

The request models are static (they are the route's types), but some limits are settings (num_images,
timeout_ms caps) and some belong to the served models (K <= T, the label range), known only once the
lifespan has loaded them. The schema FastAPI generates is kept, and each call to `/openapi.json` returns a
copy with those bounds filled in. With several models the bound is the widest one; the engine then names
the model whose smaller range a request left.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.auth import AuthSettings
from service.api.context import AppContext
from service.api.schemas import AUTO_SAMPLER, STEP_CHOOSERS
from service.api.selection import calibrated_points, frontier_points
from service.backends.base import DEFAULT_SAMPLER, SAMPLERS
from service.quality.sampler_kinds import SAMPLER_KINDS


def install(app: FastAPI, context: AppContext, auth: AuthSettings | None = None) -> None:
    """`auth`: when keys are required, the schema says so (a bearer scheme on every non-public path)."""
    base: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not base:
            base.update(
                get_openapi(
                    title=app.title, version=app.version, description=app.description, routes=app.routes
                )
            )
        schema = copy.deepcopy(base)
        request = schema["components"]["schemas"]["GenerateRequest"]
        fields = request["properties"]
        for name, bound in limits(context).items():
            _set_maximum(fields[name], bound)
        _set_bound(fields["timeout_ms"], "minimum", context.settings.min_timeout_ms)
        _set_bound(fields["latency_budget_ms"], "minimum", context.settings.min_latency_budget_ms)
        request["allOf"] = [*relations(), *calibration_rules(context)]
        models = list(context.models.values())
        if models and all(info.num_classes is not None for info in models):
            request["required"] = sorted({*request.get("required", []), "class_label"})
            fields["class_label"]["anyOf"] = [
                o for o in fields["class_label"]["anyOf"] if o.get("type") != "null"
            ]
        elif models and all(info.num_classes is None for info in models):
            fields["class_label"] = {
                "type": "null",
                "description": fields["class_label"].get("description", ""),
            }
        if models and not any(info.has_gamma for info in models):
            _drop_choice(fields["variance"], "analytic")  # needs a model's gamma.json
        if models and not any(frontier_points(info) for info in models):
            _drop_choice(fields["sampler"], AUTO_SAMPLER)  # picks among calibrated points
        if auth is not None:
            _require_bearer(schema, auth)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def limits(context: AppContext) -> dict[str, int]:
    """Field -> its inclusive maximum, from the settings and (once loaded) the served models."""
    settings = context.settings
    bounds = {"num_images": settings.max_num_images, "timeout_ms": settings.max_timeout_ms}
    models = list(context.models.values())
    if models:
        bounds["steps"] = bounds["min_steps"] = max(info.num_timesteps for info in models)
        labels = [info.num_classes for info in models if info.num_classes is not None]
        if labels:
            bounds["class_label"] = max(labels) - 1
    return bounds


def _given(name: str) -> dict[str, Any]:
    """JSON Schema for "the field is present and not null"."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def relations() -> list[dict[str, Any]]:
    """The request's rules that tie fields together (GenerateRequest and requested_kind enforce them):
    at most one of steps / latency_budget_ms / max_fid; eta only with sampler ddim; variance only with
    sampler ddpm (or none); preview_every only with stream=true."""
    rules: list[dict[str, Any]] = []
    for i, first in enumerate(STEP_CHOOSERS):
        for second in STEP_CHOOSERS[i + 1 :]:
            both = _given(first)
            both["required"].append(second)
            both["properties"][second] = {"not": {"type": "null"}}
            rules.append({"not": both})
    rules.append(
        {"if": _given("eta"), "then": {"required": ["sampler"], "properties": {"sampler": {"const": "ddim"}}}}
    )
    rules.append(
        {"if": _given("variance"), "then": {"properties": {"sampler": {"enum": [None, DEFAULT_SAMPLER]}}}}
    )
    rules.append(
        {
            "if": _given("preview_every"),
            "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        }
    )
    return rules


def calibration_rules(context: AppContext) -> list[dict[str, Any]]:
    """What the served models' calibration allows, per sampler variant named (sampler, variance), and
    for the frontier when none is named (no sampler, or auto): max_fid at least the best calibrated FID
    it could choose (below it the target is unreachable); latency_budget_ms and max_fid not at all for a
    variant without calibrated points. With several models, the widest."""
    best: dict[tuple[str | None, str | None], float] = {}
    for info in context.models.values():
        for kind in SAMPLER_KINDS.values():
            points = calibrated_points(info, kind.name)
            if points:
                key = (kind.sampler, None if kind.request_variance is None else kind.request_variance.value)
                best[key] = min(min(p.fid for p in points), best.get(key, math.inf))
        frontier = frontier_points(info)
        if frontier:
            best[(None, None)] = min(min(p.fid for p in frontier), best.get((None, None), math.inf))
    keys: set[tuple[str | None, str | None]] = {(None, None)}
    for kind in SAMPLER_KINDS.values():
        keys.add((kind.sampler, None if kind.request_variance is None else kind.request_variance.value))
    rules: list[dict[str, Any]] = []
    for sampler, variance in sorted(keys, key=str):
        if (sampler, variance) in best:
            fid = best[(sampler, variance)]
            then: dict[str, Any] = {
                "properties": {"max_fid": {"anyOf": [{"type": "null"}, {"minimum": fid}]}}
            }
        else:
            then = {"properties": {"max_fid": {"type": "null"}, "latency_budget_ms": {"type": "null"}}}
        rules.append({"if": _variant(sampler, variance), "then": then})
    return rules


def _variant(sampler: str | None, variance: str | None) -> dict[str, Any]:
    """JSON Schema for "the request names this variant", as planning.requested_kind reads a request:
    sampler None is the frontier (no sampler and no variance, or auto); a variance alone means ddpm."""
    if sampler is None:
        return {"properties": {"sampler": {"enum": [None, AUTO_SAMPLER]}, "variance": {"type": "null"}}}
    named: dict[str, Any] = {"required": ["sampler"], "properties": {"sampler": {"const": sampler}}}
    if not SAMPLERS[sampler].uses_variance:
        return named
    if variance is not None:  # ddpm with another variance: the sampler may be omitted
        return {
            "required": ["variance"],
            "properties": {"sampler": {"enum": [None, sampler]}, "variance": {"const": variance}},
        }
    own = "learned_range"  # the model's own variance: omitted with the sampler named, or named alone
    named["properties"]["variance"] = {"enum": [None, own]}
    alone = {
        "required": ["variance"],
        "properties": {"sampler": {"type": "null"}, "variance": {"const": own}},
    }
    return {"anyOf": [named, alone]}


def _require_bearer(schema: dict[str, Any], auth: AuthSettings) -> None:
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of this server (DDPM_API_KEYS)",
    }
    unauthorized = {"description": "Missing or invalid API key", "content": {"application/json": {}}}
    for path, operations in schema.get("paths", {}).items():
        if path in auth.public_paths:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation.setdefault("responses", {})["401"] = unauthorized


def _drop_choice(field: dict[str, Any], value: str) -> None:
    for option in field.get("anyOf", [field]):
        if value in option.get("enum", []):
            option["enum"] = [v for v in option["enum"] if v != value]


def _set_maximum(field: dict[str, Any], bound: int) -> None:
    _set_bound(field, "maximum", bound)


def _set_bound(field: dict[str, Any], keyword: str, bound: float) -> None:
    # An optional field is {"anyOf": [{"type": "integer", ...}, {"type": "null"}]}: bound the number.
    for option in field.get("anyOf", [field]):
        if option.get("type") in ("integer", "number"):
            if keyword == "minimum":
                option.pop("exclusiveMinimum", None)  # the published minimum replaces "> 0"
            option[keyword] = bound
