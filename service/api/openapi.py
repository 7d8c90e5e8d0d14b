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
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.auth import AuthSettings
from service.api.context import AppContext


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
        fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
        for name, bound in limits(context).items():
            _set_maximum(fields[name], bound)
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


def _set_maximum(field: dict[str, Any], bound: int) -> None:
    # An optional field is {"anyOf": [{"type": "integer", ...}, {"type": "null"}]}: bound the integer.
    for option in field.get("anyOf", [field]):
        if option.get("type") == "integer":
            option["maximum"] = bound
