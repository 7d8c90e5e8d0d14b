"""The gateway under test: a real uvicorn server in a thread of the test process, on a loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.api.app import create_app
from service.api.settings import Settings
from tests.live_server import TIMEOUT, is_ready, served, wait_for

__all__ = ["TIMEOUT", "gateway", "gateway_settings", "is_ready", "served", "wait_for"]


def gateway_settings(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dirs": [model_dir],
        "device": "cpu",
        "max_batch": 4,
        "max_queue": 32,
        "max_num_images": 4,
        "warmup_iterations": 1,
        "compile": False,
        "torch_threads": 1,
        "drain_timeout_s": 5.0,
    }
    return Settings(**{**values, **overrides})


def gateway(settings: Settings) -> FastAPI:
    return create_app(settings)
