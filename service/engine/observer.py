"""What the engine reports for metrics, without knowing about Prometheus.

The API layer implements EngineObserver with prometheus-client (subclassing NullObserver keeps it
short). Callbacks run on the engine thread, between iterations: they must be quick and must not call
back into the engine. An exception raised by an observer is logged and otherwise ignored. `engine` is
the engine's name (its device, e.g. "cuda:0" or "cpu"): a bounded label. K is given as the request's
`steps`; bucket it before using it as a label.
"""

from __future__ import annotations

from typing import Protocol

from service.engine.request import Request, RowStatus


class EngineObserver(Protocol):
    def on_ready(self, engine: str, warmup_seconds: float) -> None:
        """The executor warmed up every bucket (at start and after each restart)."""
        ...

    def on_compiled(self, engine: str, batch_size: int, seconds: float) -> None:
        """A batch size now runs compiled (CPU: compiled in the background after warm-up). Called on the
        compile thread, not the engine thread: keep it thread-safe."""
        ...

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        """One iteration: `active_rows` real rows padded to `bucket`, taking `seconds` (network + step)."""
        ...

    def on_row_admitted(self, engine: str, request: Request, queue_seconds: float) -> None: ...

    def on_row_finished(
        self, engine: str, request: Request, status: RowStatus, queue_seconds: float, total_seconds: float
    ) -> None:
        """Every row ends here exactly once, whatever its outcome."""
        ...

    def on_rejected(self, engine: str, reason: str) -> None:
        """submit refused a request; `reason` is an EngineError code (queue_full, invalid_request, ...)."""
        ...

    def on_executor_restart(self, engine: str, error: str) -> None: ...


class NullObserver:
    """The default: observes nothing."""

    def on_ready(self, engine: str, warmup_seconds: float) -> None:
        pass

    def on_compiled(self, engine: str, batch_size: int, seconds: float) -> None:
        pass

    def on_step(self, engine: str, active_rows: int, bucket: int, seconds: float) -> None:
        pass

    def on_row_admitted(self, engine: str, request: Request, queue_seconds: float) -> None:
        pass

    def on_row_finished(
        self, engine: str, request: Request, status: RowStatus, queue_seconds: float, total_seconds: float
    ) -> None:
        pass

    def on_rejected(self, engine: str, reason: str) -> None:
        pass

    def on_executor_restart(self, engine: str, error: str) -> None:
        pass
