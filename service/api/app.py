"""The FastAPI application factory.

Lifespan: start the backend (load every model, start its workers) before the first request; /readyz turns
true only once every worker has warmed up. Shutdown: uvicorn first stops accepting connections and waits
(up to its graceful timeout) for in-flight requests; then the backend is stopped with drain=True, so
anything still queued finishes and new submissions are refused with 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from service.api import errors, openapi
from service.api.auth import BearerAuth, key_id
from service.api.context import AppContext
from service.api.metrics import Metrics
from service.api.routes import generate, health, models, playground
from service.api.settings import Settings
from service.backends.base import Backend, EngineSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # a generate request is a few hundred bytes; refuse anything absurd early

DESCRIPTION = """
Class-conditional image generation with Improved DDPM models, where each request picks its step budget
**K** (or a latency budget / quality target from which the server picks K). Requests are batched at step
granularity: a K=10 request never waits for a K=1000 one to finish.

Errors are JSON: `{"error": {"code", "message", "field"}}`.
"""


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app; `backend` replaces the one `settings.backend` names (tests, other deployments).
    Raises SettingsError when a model folder is missing."""
    settings = settings or Settings()
    auth = settings.auth()  # before anything starts: a bad key file stops the server here
    metrics = Metrics(settings.metric_steps)
    context = AppContext(settings, backend or _backend(settings, metrics), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await context.backend.start()
        context.models = {info.name: info for info in context.backend.models()}
        metrics.set_models(context.models.values())
        metrics.watch(context.backend)
        context.started = True
        log.info("serving %s; warming up", ", ".join(context.models))
        try:
            yield
        finally:
            context.draining = True
            log.info("draining (up to %.0f s)", settings.drain_timeout_s)
            await context.backend.stop(drain=True, timeout=settings.drain_timeout_s)

    app = FastAPI(
        title="ddpm-serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.context = context
    errors.install(app, on_error=lambda request, error: _count_failure(metrics, request, error))
    for router in (generate.router, models.router, health.router):
        app.include_router(router)
    if settings.playground:
        app.include_router(playground.router)
    openapi.install(app, context, auth)
    if auth is not None:
        app.add_middleware(BearerAuth, settings=auth, on_refused=metrics.count_auth_refusal)
        log.info(
            "API keys required (%d keys: %s) except on %s",
            len(auth.keys),
            ", ".join(key_id(key) for key in auth.keys),
            ", ".join(sorted(auth.public_paths)),
        )
    return app


def _backend(settings: Settings, metrics: Metrics) -> Backend:
    from service.backends.factory import make_backend  # each backend's imports only when it is chosen

    engine_settings = EngineSettings(
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        run_to_completion=settings.run_to_completion,
        precision=settings.precision,
        compile=settings.compile,
        compile_cache_dir=None if settings.compile_cache_dir is None else str(settings.compile_cache_dir),
        warmup_iterations=settings.warmup_iterations,
        threads=settings.torch_threads,
    )
    return make_backend(
        settings.backend,
        settings.resolved_model_dirs(),
        engine_settings=engine_settings,
        device=settings.device,
        triton_urls=settings.triton_urls,
        triton_dns=settings.triton_dns,
        triton_nameserver=settings.triton_nameserver,
        triton_resolve_interval_s=settings.triton_resolve_interval_s,
        observer_for=metrics.observer_for,
    )


def _count_failure(metrics: Metrics, request: Request, error: errors.ApiError) -> None:
    if request.url.path != "/generate":
        return
    # The route sets the labels once it knows the model and K; earlier failures have neither (an
    # unknown model name from a client must not become a label value).
    model, k, sampler = getattr(request.state, "metric_labels", ("unknown", "none", "none"))
    metrics.count_request(model, k, sampler, error.code)
