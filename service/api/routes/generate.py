"""POST /generate: PNG, JSON, or server-sent events; a client that goes away cancels its images."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from service.api.context import AppContext, Context
from service.api.degradation import AsRun, calibrated_fid, degradation_info
from service.api.errors import CLIENT_CLOSED_REQUEST, ApiError, as_api_error, error_body
from service.api.planning import Plan, plan_generation
from service.api.schemas import (
    CalibratedQuality,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    PreviewEvent,
    ProgressEvent,
    Selection,
    Timings,
)
from service.api.selection import point_at
from service.backends.base import Generation, GenerationProgress, GenerationResult
from service.images import grid, png_bytes, preview_png
from service.quality.sampler_kinds import kind_name

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])

KEEPALIVE_SECONDS = 15.0  # an idle stream (long queue) sends a comment so proxies keep it open
PREVIEW_SIDE = 128  # previews larger than this a side are shrunk (a 256-pixel x0 is sent at 128)
# PNGs of up to this many values (a response's images together) are encoded on the event loop: the
# bundled model's 28 x 28 takes about 0.1 ms, less than the event loop's CPU for a hop to a worker thread
# and back (docs/gateway-capacity.md); a larger one is encoded off the loop so other requests go on.
INLINE_PNG_VALUES = 64 * 64 * 3
T = TypeVar("T")

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
        png = await _encode(_values(result.images), lambda: _png(result.images))
        response = Response(png, media_type="image/png", headers=_png_headers(result, plan))
    seconds = time.perf_counter() - started
    _count_ok(context, plan, result, seconds)
    if plan.predicted_seconds is not None and result.degradation is None:
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
    """(model, K label, sampler variant) of a request's metrics, as planned."""
    kind = kind_name(plan.spec.sampler, plan.spec.variance)
    return plan.info.name, context.metrics.k_label(plan.steps), kind


def _count_ok(context: AppContext, plan: Plan, result: GenerationResult, seconds: float) -> None:
    """A success is counted under what ran (a degraded request's own K and variant)."""
    ran = AsRun.of(result, plan)
    metrics = context.metrics
    metrics.count_request(plan.info.name, metrics.k_label(ran.steps), ran.kind, "ok", seconds)
    degradation = result.degradation
    if degradation is not None:
        info = degradation_info(result, plan)
        delta = None if info.fid_used is None or info.fid_asked is None else info.fid_used - info.fid_asked
        metrics.count_degradation(plan.info.name, info.reason, plan.steps, info.steps_used, delta)


def _event_stream(generation: Generation, plan: Plan, context: AppContext, started: float) -> Response:
    labels = _metric_labels(plan, context)

    async def events() -> AsyncIterator[bytes]:
        status = "cancelled"  # unless the stream ends on its own: a client that left closes it early
        try:
            async for chunk in _progress_events(generation, plan):
                yield chunk
            result = await generation.result()
            payload = await _json_body(result, plan)
            status = "ok"
            _count_ok(context, plan, result, time.perf_counter() - started)
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
            if status != "ok":
                context.metrics.count_request(*labels, status)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_choice_headers(plan)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _progress_events(generation: Generation, plan: Plan) -> AsyncIterator[bytes]:
    num_images, steps = plan.spec.num_images, plan.steps
    done, total = [0] * num_images, [steps] * num_images
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
        total[event.image_index] = event.num_steps  # a degraded image's own K
        progress = ProgressEvent(
            image=event.image_index,
            step=event.steps_done,
            steps=event.num_steps,
            progress=sum(done) / sum(total),
        )
        chunk = format_sse_event(event="progress", data_str=progress.model_dump_json())
        if event.preview is not None:
            # One write for both events: on a CPU server every extra socket write and client wake-up
            # is taken from the network's threads (docs/previews.md measures what previews cost).
            chunk += format_sse_event(event="preview", data_str=await _preview_json(event))
        yield chunk


async def _preview_json(event: GenerationProgress) -> str:
    """The predicted x0 of a progress event as a `preview` event's data."""
    preview = event.preview
    assert preview is not None
    png = await _encode(preview.size, lambda: preview_png(preview, PREVIEW_SIDE))
    data = PreviewEvent(
        image=event.image_index,
        step=event.steps_done,
        steps=event.num_steps,
        png=base64.b64encode(png).decode("ascii"),
    )
    return data.model_dump_json()


async def _json_body(result: GenerationResult, plan: Plan) -> GenerateResponse:
    pngs = await _encode(_values(result.images), lambda: [png_bytes(image) for image in result.images])
    spec, choice = plan.spec, plan.choice
    ran = AsRun.of(result, plan)
    point = plan.quality if result.degradation is None else point_at(plan.info, ran.kind, ran.steps)
    predicted = None if choice.predicted_seconds is None else choice.predicted_seconds * 1000
    return GenerateResponse(
        model=spec.model,
        steps=ran.steps,
        sampler=ran.sampler,
        variance=ran.variance,
        degraded=result.degradation is not None,
        degradation=None if result.degradation is None else degradation_info(result, plan),
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


async def _encode(values: int, encode: Callable[[], T]) -> T:
    """PNG encoding of images with `values` values in all: here when small, else in a worker thread."""
    if values <= INLINE_PNG_VALUES:
        return encode()
    return await run_in_threadpool(encode)


def _values(images: list[np.ndarray]) -> int:
    return sum(image.size for image in images)


def _png(images: list[np.ndarray]) -> bytes:
    """One PNG: the image, or a grid of all of them (JSON returns them one by one)."""
    return png_bytes(images[0] if len(images) == 1 else grid(np.stack(images)))


def _choice_headers(plan: Plan, result: GenerationResult | None = None) -> dict[str, str]:
    """What runs (as planned; once the result is known, as run)."""
    spec = plan.spec
    ran = AsRun.of(result, plan)
    headers = {
        "X-Model": spec.model,
        "X-Steps": str(ran.steps),
        "X-Seed": str(spec.seed),
        "X-Sampler": ran.sampler,
        "X-Sampler-Choice": plan.choice.sampler_mode,
        "X-Num-Images": str(spec.num_images),
    }
    if ran.variance is not None:
        headers["X-Variance"] = ran.variance
    if result is not None and result.degradation is not None:
        headers["X-Degraded"] = str(result.degradation.reason)
        headers["X-Steps-Asked"] = str(plan.steps)
    if result is not None:
        fid = calibrated_fid(result, plan)
        if fid is not None:
            headers["X-Calibrated-FID"] = f"{fid:.4g}"
    return headers


def _png_headers(result: GenerationResult, plan: Plan) -> dict[str, str]:
    t = _timings(result)
    timing = f"queue;dur={t.queue_ms:.1f}, compute;dur={t.compute_ms:.1f}, total;dur={t.total_ms:.1f}"
    return {**_choice_headers(plan, result), "Server-Timing": timing}
