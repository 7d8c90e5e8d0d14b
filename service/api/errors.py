"""The one place where errors become HTTP responses: {"error": {"code", "message", "field"}}.

Engine errors (the vocabulary every backend reports in) map to a status by class; request validation
errors name the offending field; malformed JSON is a 400 naming the body. Anything unexpected is a 500
with no internals in the body (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.backends.base import UnknownModel
from service.backends.base import errors as engine

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; nobody reads it, logs do
RETRY_AFTER_UNAVAILABLE = 5  # seconds: a restarting executor or a draining server


class ApiError(Exception):
    """An error the API raises itself (bad field for this model, unreachable target...)."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


# Most specific first: UnknownModel is an InvalidRequest.
_ENGINE_STATUS: tuple[tuple[type[engine.EngineError], int], ...] = (
    (UnknownModel, 404),
    (engine.InvalidRequest, 422),
    (engine.QueueFull, 429),
    (engine.Cancelled, CLIENT_CLOSED_REQUEST),
    (engine.DeadlineExceeded, 504),
    (engine.EngineShuttingDown, 503),
    (engine.EngineDead, 503),
    (engine.ExecutorFailed, 503),  # the executor was rebuilt: the same request can be retried
    (engine.NonFiniteOutput, 500),
)


def as_api_error(error: Exception) -> ApiError:
    """Any exception as the ApiError it is answered with."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, engine.EngineError):
        status = next((s for kind, s in _ENGINE_STATUS if isinstance(error, kind)), 500)
        retry_after: float | None = None
        if isinstance(error, engine.QueueFull):
            retry_after = error.retry_after
        elif status == 503:
            retry_after = RETRY_AFTER_UNAVAILABLE
        field = "model" if isinstance(error, UnknownModel) else None
        if isinstance(error, engine.InvalidRequest) and error.field is not None:
            field = error.field
        return ApiError(status, error.code, str(error), field, retry_after)
    return ApiError(500, "internal_error", "the server failed unexpectedly; the error was logged")


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "field": error.field}}


def error_response(error: ApiError) -> JSONResponse:
    headers = None
    if error.retry_after is not None:
        # Retry-After takes whole seconds; round up so a client never retries early.
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


def validation_error(errors: Sequence[Any]) -> ApiError:
    """FastAPI's validation errors as one message naming every field at fault (the first in `field`)."""
    json_errors = [e for e in errors if e.get("type") == "json_invalid"]
    if json_errors:
        detail = json_errors[0].get("ctx", {}).get("error", "cannot be parsed")
        position = json_errors[0]["loc"][-1]
        message = f"body: malformed JSON at position {position} ({detail})"
        return ApiError(400, "malformed_json", message, "body")
    parts, fields = [], []
    for e in errors:
        field = _field_name(e.get("loc", ()))
        fields.append(field)
        parts.append(f"{field}: {e.get('msg', 'invalid')}")
    return ApiError(422, "invalid_request", "; ".join(parts), fields[0] if fields else None)


def _status_code_name(status: int) -> str:
    """404 -> "not_found": a bounded, readable code for errors Starlette raises (routing, body size)."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _field_name(loc: Sequence[Any]) -> str:
    # ("body", "steps") -> "steps"; ("body",) -> "body"; ("query", "x") -> "x"; ("path", "name") -> "name"
    path = [str(part) for part in loc[1:]] if len(loc) > 1 else [str(part) for part in loc]
    return ".".join(path) or "body"


def install(app: FastAPI, on_error: Any = None) -> None:
    """Register the handlers; `on_error(request, ApiError)` is told of each error answered (metrics)."""

    def respond(request: Request, error: ApiError) -> JSONResponse:
        if on_error is not None:
            on_error(request, error)
        return error_response(error)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        error = as_api_error(exc)
        if error.status >= 500 and error.code == "internal_error":
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(request, error)

    async def request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = validation_error(exc.errors())
        content_type = request.headers.get("content-type")
        if error.field == "body" and content_type and "json" not in content_type:
            # FastAPI hands a non-JSON body over as bytes, whose error ("a valid dictionary") hides the
            # usual cause: `curl -d` without -H 'Content-Type: application/json'.
            message = f"body: send a JSON object with Content-Type: application/json, not {content_type}"
            error = ApiError(415, "unsupported_media_type", message, "body")
        return respond(request, error)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _status_code_name(exc.status_code)
        error = ApiError(exc.status_code, code, str(exc.detail), retry_after=None)
        response = respond(request, error)
        response.headers.update(exc.headers or {})
        return response

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(engine.EngineError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, api_error)
