"""Helpers of the API tests: model folders, settings, and apps served through TestClient."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.settings import Settings
from service.backends.base import Backend
from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.quality.tradeoff import Tradeoff, TradeoffPoint, write_tradeoff

Table = tuple[tuple[str, int, float], ...]  # (sampler variant, K, FID) at 64 samples

READY_TIMEOUT = 60.0
# (K, FID, seconds per image) of the calibrated model's ddpm points; ddim has one point.
DDPM_POINTS = ((5, 30.0, 0.05), (10, 20.0, 0.10), (20, 12.0, 0.20))


@dataclass(frozen=True)
class ModelDirs:
    calibrated: Path  # model "tiny", with tradeoff.json
    raw: Path  # model "tiny-raw", uncalibrated


def make_settings(dirs: ModelDirs, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dirs": [dirs.calibrated, dirs.raw],
        "device": "cpu",
        "max_batch": 4,
        "max_queue": 8,
        "max_num_images": 4,
        "warmup_iterations": 1,
        "compile": False,  # on the CPU it would compile in the background for minutes
        "default_steps": 5,
        "drain_timeout_s": 10.0,
    }
    return Settings(**{**values, **overrides})


def wait_ready(client: TestClient, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


@contextmanager
def serve(settings: Settings, backend: Backend | None = None, ready: bool = True) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan running (startup on enter, draining shutdown on exit)."""
    with TestClient(create_app(settings, backend), raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


def table_model(
    root: Path,
    name: str,
    table: Table,
    *,
    extra: tuple[TradeoffPoint, ...] = (),
    seconds_per_step: float = 0.01,
    num_timesteps: int | None = None,
) -> Path:
    """A tiny-test model folder calibrated with a made-up table (and, with num_timesteps, a shorter T)."""
    model_dir = random_model_dir(get_preset("tiny-test"), root / name, seed=0, name=name)
    if num_timesteps is not None:
        manifest = json.loads((model_dir / "model.json").read_text())
        manifest["diffusion"]["num_timesteps"] = num_timesteps
        (model_dir / "model.json").write_text(json.dumps(manifest))
    points = [TradeoffPoint(v, k, 64, fid, 0.5, 0.5, None, seconds_per_step * k) for v, k, fid in table]
    write_tradeoff(model_dir, Tradeoff(name, "test", "none", "none", points=[*points, *extra]))
    return model_dir
