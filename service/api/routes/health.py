"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.context import Context
from service.api.schemas import Health

router = APIRouter(tags=["operations"])
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "Not (yet / any more) able to serve"}
}


@router.get("/healthz", response_model=Health, responses=_UNAVAILABLE)
async def healthz(context: Context) -> JSONResponse:
    """Liveness: 200 while starting, warming up, serving or draining; 503 once a model has no worker."""
    if context.started and not context.backend.alive and not context.draining:
        return JSONResponse({"status": "dead"}, status_code=503)
    return JSONResponse({"status": "ok" if context.started else "starting"})


@router.get("/readyz", response_model=Health, responses=_UNAVAILABLE)
async def readyz(context: Context) -> JSONResponse:
    """Readiness: 200 only after every worker warmed up (compile + every batch bucket), until shutdown."""
    backend = context.backend
    if context.draining:
        status = "draining"
    elif not context.started:
        status = "starting"
    elif not backend.alive:
        status = "dead"
    elif not backend.ready:
        status = "warming_up"
    else:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": status}, status_code=503)


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(context: Context) -> Response:
    # A route rather than mounting prometheus_client.make_asgi_app(): a mount answers /metrics with a
    # redirect to /metrics/, and the registry is this app's, which a route reaches through the context.
    return Response(context.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
