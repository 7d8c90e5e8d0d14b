"""What every route needs, built once per app by create_app() and handed to routes as a dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.api.metrics import Metrics
from service.api.settings import Settings
from service.backends.base import Backend, ModelInfo


@dataclass
class AppContext:
    settings: Settings
    backend: Backend
    metrics: Metrics
    models: dict[str, ModelInfo] = field(default_factory=dict)  # filled at startup, the default first
    started: bool = False
    draining: bool = False

    @property
    def default_model(self) -> str | None:
        return next(iter(self.models), None)


async def get_context(request: Request) -> AppContext:
    """A coroutine, not a plain function: FastAPI runs a plain-function dependency in a worker thread, a
    hop there and back on every request for one attribute read (docs/gateway-capacity.md)."""
    context: AppContext = request.app.state.context
    return context


Context = Annotated[AppContext, Depends(get_context)]
