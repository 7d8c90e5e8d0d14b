"""Degrade before refusing, over HTTP: `min_steps` / `max_degraded_fid` let the server run a coarser
(sampler, K) from the calibrated frontier when the load requires it, and the response says what ran and
why. One slot (max_batch=1): a request of four images is admitted with three of its own rows queued
behind the first, which is queue pressure (service.engine.degrade), deterministically."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.model.presets import get_preset
from service.model.store import random_model_dir
from tests.api.helpers import ModelDirs, make_settings, serve, table_model

# (variant, K, FID) at 64 samples. Frontier: dpm++2m 5 (14), dpm++2m 10 (9), fixed-small 20 (8).
TABLE = (
    ("ddpm", 5, 30.0),
    ("ddpm", 10, 20.0),
    ("ddpm", 20, 12.0),
    ("dpm++2m", 5, 14.0),
    ("dpm++2m", 10, 9.0),
    ("fixed-small", 20, 8.0),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("degrade")
    calibrated = table_model(root, "tiny", TABLE)
    raw = random_model_dir(get_preset("tiny-test"), root / "tiny-raw", seed=1, name="tiny-raw")
    with serve(make_settings(ModelDirs(calibrated, raw), max_batch=1)) as client:
        yield client


def _post(client: TestClient, **fields: object) -> dict:
    body = {"class_label": 1, "response_format": "json", "seed": 3, "steps": 20, "num_images": 4, **fields}
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_without_a_tolerance_nothing_changes(client: TestClient) -> None:
    body = _post(client)
    assert body["steps"] == 20 and body["sampler"] == "ddpm" and not body["degraded"]
    assert body["degradation"] is None


def test_queue_pressure_degrades_to_the_frontier_down_to_the_floor(client: TestClient) -> None:
    body = _post(client, min_steps=5)
    d = body["degradation"]
    assert body["degraded"] and d["reason"] == "queue"
    # Three rows behind the first with one slot (the floor from two on): on the frontier, dpm++2m K=5.
    assert (body["steps"], body["sampler"], body["variance"]) == (5, "dpm++2m", None)
    assert d["steps_asked"] == 20 and d["sampler_asked"] == "ddpm" and d["steps_used"] == [5, 5, 5, 5]
    assert d["replanned_at"] == [None] * 4
    assert (d["fid_asked"], d["fid_used"]) == (12.0, 14.0)
    assert body["quality"]["fid"] == 14.0  # the calibrated quality of what ran
    assert len(body["images"]) == 4 and "ddpm K=20" in d["message"] and "dpm++2m K=5" in d["message"]


def test_a_fid_bound_keeps_only_points_good_enough(client: TestClient) -> None:
    body = _post(client, max_degraded_fid=10.0)
    assert (body["steps"], body["sampler"]) == (10, "dpm++2m")  # K=5 scores 14 > 10
    assert body["degradation"]["fid_used"] == 9.0


def test_a_named_sampler_degrades_on_its_own_points(client: TestClient) -> None:
    body = _post(client, sampler="ddpm", variance="fixed_small", min_steps=4)
    assert body["sampler"] == "ddpm" and body["variance"] == "fixed_small" and body["steps"] == 4
    assert body["degradation"]["sampler_asked"] == "fixed-small"


def test_png_answers_say_what_ran_in_headers(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"class_label": 2, "steps": 20, "num_images": 4, "min_steps": 5, "seed": 1}
    )
    assert r.status_code == 200
    assert r.headers["X-Degraded"] == "queue" and r.headers["X-Steps-Asked"] == "20"
    assert r.headers["X-Steps"] == "5" and r.headers["X-Sampler"] == "dpm++2m"
    Image.open(io.BytesIO(r.content)).verify()


def test_degradations_are_counted_with_their_cost(client: TestClient) -> None:
    _post(client, min_steps=5)
    text = client.get("/metrics").text
    assert 'ddpm_degraded_requests_total{model="tiny",reason="queue"}' in text
    asked = _sample(text, 'ddpm_degraded_steps_total{model="tiny",which="asked"}')
    used = _sample(text, 'ddpm_degraded_steps_total{model="tiny",which="used"}')
    assert used < asked
    assert _sample(text, 'ddpm_degraded_fid_delta_sum{model="tiny"}') >= 2.0  # 14 - 12 per request


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"min_steps": 0}, "min_steps", "invalid_request"),
        ({"model": "tiny-raw", "max_degraded_fid": 10.0}, "max_degraded_fid", "model_uncalibrated"),
    ],
)
def test_bad_tolerances_are_refused_naming_the_field(
    client: TestClient, fields: dict, field: str, code: str
) -> None:
    r = client.post("/generate", json={"class_label": 1, "steps": 20, **fields})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["code"] == code


def test_an_uncalibrated_model_degrades_by_halving_down_to_the_floor(client: TestClient) -> None:
    body = _post(client, model="tiny-raw", min_steps=3)
    # Options 20, 10, 5, 3 (halvings, then the floor); three rows behind one slot: the floor.
    assert body["degraded"] and body["steps"] == 3 and body["sampler"] == "ddpm"


def test_a_floor_above_the_asked_k_leaves_the_request_as_asked(client: TestClient) -> None:
    body = _post(client, min_steps=30)
    assert body["steps"] == 20 and not body["degraded"]
