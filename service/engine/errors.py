"""Typed engine errors: the API layer maps each class to one HTTP status in one place.

Every error a caller can receive from the engine, synchronously from `submit` or through a row's
`on_done` result, derives from `EngineError`; `code` is a stable machine-readable name.
"""

from __future__ import annotations

from typing import ClassVar


class EngineError(Exception):
    """Base of every error the engine reports to callers."""

    code: ClassVar[str] = "engine_error"


class InvalidRequest(EngineError):
    """The request cannot be served by this model; the message says what to change, `field` names the
    request field at fault (None when it is the request as a whole)."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QueueFull(EngineError):
    """Admission refused because the queue is at its limit; try again after `retry_after` seconds."""

    code = "queue_full"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(EngineError):
    """The caller cancelled the request (or its HTTP request went away) before it finished."""

    code = "cancelled"


class DeadlineExceeded(EngineError):
    """The request's deadline passed while it was queued or being sampled."""

    code = "deadline_exceeded"


class NonFiniteOutput(EngineError):
    """The network or the sampler step produced NaN or infinity for this image; no image is returned."""

    code = "non_finite_output"


class ExecutorFailed(EngineError):
    """The device executor crashed while this request was in flight; the executor was restarted."""

    code = "executor_failed"


class EngineDead(EngineError):
    """The engine stopped working (its executor could not be restarted); it accepts nothing more."""

    code = "engine_dead"


class EngineShuttingDown(EngineError):
    """The engine is stopping: new requests are refused, and unfinished ones fail when it cannot drain."""

    code = "engine_shutting_down"
