"""POST /generate: PNG, JSON, or server-sent events; a client that goes away cancels its images."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from service.api.context import AppContext, Context
from service.api.errors import CLIENT_CLOSED_REQUEST, ApiError, as_api_error, error_body
from service.api.planning import Plan, plan_generation
from service.api.schemas import (
    CalibratedQuality,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ProgressEvent,
    Selection,
    Timings,
)
from service.backends.base import SAMPLERS, Generation, GenerationResult
from service.images import grid, png_bytes
from service.quality.sampler_kinds import kind_name

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])

KEEPALIVE_SECONDS = 15.0  # an idle stream (long queue) sends a comment so proxies keep it open

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    422: {"model": ErrorResponse, "description": "Invalid field (named in error.field)"},
    429: {"model": ErrorResponse, "description": "Queue full; retry after the Retry-After header"},
    503: {"model": ErrorResponse, "description": "Shutting down or worker unavailable"},
    504: {"model": ErrorResponse, "description": "Deadline (timeout_ms) passed"},
}
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "image/png (default), JSON (response_format=json) or text/event-stream (stream=true)",
        "content": {"image/png": {}, "text/event-stream": {}},
    }
}


@router.post("/generate", response_model=GenerateResponse, responses={**_OK, **_ERRORS})
async def generate(body: GenerateRequest, request: Request, context: Context) -> Response | GenerateResponse:
    """Generate images of a class with K reverse steps, chosen by the caller or from a target."""
    started = time.perf_counter()
    plan = plan_generation(body, context)
    labels = _metric_labels(plan, context)
    request.state.metric_labels = labels  # failures are counted by the error handlers
    generation = context.backend.submit(plan.spec, progress=body.stream)
    if body.stream:
        return _event_stream(generation, plan, context, started)
    result = await _wait_for_result(generation, request)
    response: Response | GenerateResponse
    if body.response_format == "json":
        response = await _json_body(result, plan)
    else:
        png = await run_in_threadpool(_png, result.images)
        response = Response(png, media_type="image/png", headers=_png_headers(result, plan))
    seconds = time.perf_counter() - started
    context.metrics.count_request(*labels, "ok", seconds)
    if plan.predicted_seconds is not None:
        context.metrics.tracker(plan.info.name).record_outcome(plan.predicted_seconds, seconds)
    return response


async def _wait_for_result(generation: Generation, request: Request) -> GenerationResult:
    result = asyncio.ensure_future(generation.result())
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
        if result in done:
            return result.result()
        raise ApiError(
            CLIENT_CLOSED_REQUEST, "cancelled", "the client disconnected; the request was cancelled"
        )
    finally:
        gone.cancel()
        if not result.done():  # the client left, or this handler was cancelled: free the slots
            generation.cancel()
            result.cancel()


async def _client_gone(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (servers block until then).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _metric_labels(plan: Plan, context: AppContext) -> tuple[str, str, str]:
    """(model, K label, sampler variant) of a request's metrics."""
    kind = kind_name(plan.spec.sampler, plan.spec.variance)
    return plan.info.name, context.metrics.k_label(plan.steps), kind


def _event_stream(generation: Generation, plan: Plan, context: AppContext, started: float) -> Response:
    labels = _metric_labels(plan, context)

    async def events() -> AsyncIterator[bytes]:
        status = "cancelled"  # unless the stream ends on its own: a client that left closes it early
        try:
            async for chunk in _progress_events(generation, plan):
                yield chunk
            payload = await _json_body(await generation.result(), plan)
            status = "ok"
            yield format_sse_event(event="result", data_str=payload.model_dump_json())
        except Exception as e:  # the status line is sent: errors travel as an event
            error = as_api_error(e)
            if error.code == "internal_error":
                log.error("stream of generation %s failed", generation.id, exc_info=e)
            status = error.code
            yield format_sse_event(event="error", data_str=json.dumps(error_body(error)))
        finally:
            if status == "cancelled":
                generation.cancel()
            seconds = time.perf_counter() - started if status == "ok" else None
            context.metrics.count_request(*labels, status, seconds)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_choice_headers(plan)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _progress_events(generation: Generation, plan: Plan) -> AsyncIterator[bytes]:
    num_images, steps = plan.spec.num_images, plan.steps
    done = [0] * num_images
    stream = generation.progress()
    while True:
        try:
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                event = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            yield KEEPALIVE_COMMENT
            continue
        done[event.image_index] = event.steps_done
        progress = ProgressEvent(
            image=event.image_index,
            step=event.steps_done,
            steps=event.num_steps,
            progress=sum(done) / (num_images * steps),
        )
        yield format_sse_event(event="progress", data_str=progress.model_dump_json())


async def _json_body(result: GenerationResult, plan: Plan) -> GenerateResponse:
    pngs = await run_in_threadpool(lambda: [png_bytes(image) for image in result.images])
    spec, choice, point = plan.spec, plan.choice, plan.quality
    predicted = None if choice.predicted_seconds is None else choice.predicted_seconds * 1000
    return GenerateResponse(
        model=spec.model,
        steps=plan.steps,
        sampler=spec.sampler,
        variance=_variance(plan),
        eta=spec.eta or 0.0,
        class_label=spec.class_label,
        seed=spec.seed,
        seed_chosen_by_server=plan.seed_chosen_by_server,
        num_images=spec.num_images,
        images=[base64.b64encode(png).decode("ascii") for png in pngs],
        timings=_timings(result),
        quality=None if point is None else CalibratedQuality.model_validate(point, from_attributes=True),
        selection=Selection(
            mode=choice.mode,
            sampler_mode=choice.sampler_mode,
            reason=choice.reason,
            predicted_latency_ms=predicted,
            candidates=list(choice.candidates),
        ),
    )


def _timings(result: GenerationResult) -> Timings:
    queue_ms = result.queue_seconds * 1000
    total_ms = result.total_seconds * 1000
    return Timings(queue_ms=queue_ms, compute_ms=max(0.0, total_ms - queue_ms), total_ms=total_ms)


def _png(images: list[np.ndarray]) -> bytes:
    """One PNG: the image, or a grid of all of them (JSON returns them one by one)."""
    return png_bytes(images[0] if len(images) == 1 else grid(np.stack(images)))


def _variance(plan: Plan) -> str | None:
    """ddpm's variance type as run (the model's own when the request named none); None otherwise."""
    spec = plan.spec
    if not SAMPLERS[spec.sampler].uses_variance:
        return None
    return str(spec.variance or plan.info.manifest.diffusion.variance_type)


def _choice_headers(plan: Plan) -> dict[str, str]:
    spec = plan.spec
    headers = {
        "X-Model": spec.model,
        "X-Steps": str(plan.steps),
        "X-Seed": str(spec.seed),
        "X-Sampler": spec.sampler,
        "X-Sampler-Choice": plan.choice.sampler_mode,
        "X-Num-Images": str(spec.num_images),
    }
    variance = _variance(plan)
    if variance is not None:
        headers["X-Variance"] = variance
    return headers


def _png_headers(result: GenerationResult, plan: Plan) -> dict[str, str]:
    t = _timings(result)
    timing = f"queue;dur={t.queue_ms:.1f}, compute;dur={t.compute_ms:.1f}, total;dur={t.total_ms:.1f}"
    return {**_choice_headers(plan), "Server-Timing": timing}
