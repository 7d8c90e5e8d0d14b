"""API test fixtures: tiny random models (one calibrated with a hand-written tradeoff.json, one not),
a shared app served through TestClient with its lifespan, one torch thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.quality.tradeoff import Tradeoff, TradeoffPoint, write_tradeoff
from tests.api.helpers import DDPM_POINTS, ModelDirs, make_settings, serve


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores more threads make the tiny model slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _point(sampler: str, steps: int, fid: float, seconds: float) -> TradeoffPoint:
    return TradeoffPoint(sampler, steps, 64, fid, 0.5, 0.5, 0.9, seconds, bpd=5.0, bpd_images=8)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> ModelDirs:
    root = tmp_path_factory.mktemp("api-models")
    preset = get_preset("tiny-test")
    calibrated = random_model_dir(preset, root / "tiny", seed=0, name="tiny")
    points = [_point("ddpm", k, fid, s) for k, fid, s in DDPM_POINTS] + [_point("ddim", 10, 25.0, 0.1)]
    write_tradeoff(calibrated, Tradeoff("tiny", "test", "none", "none", {"64": 1.0}, points))
    raw = random_model_dir(preset, root / "tiny-raw", seed=1, name="tiny-raw")
    return ModelDirs(calibrated, raw)


@pytest.fixture(scope="module")
def client(model_dirs: ModelDirs) -> Iterator[TestClient]:
    """One app shared by a module's tests (starting one costs a model load and a warm-up)."""
    with serve(make_settings(model_dirs)) as client:
        yield client
