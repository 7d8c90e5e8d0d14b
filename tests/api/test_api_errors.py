"""Bad input answers 4xx naming the field, never 5xx; overload and deadlines map to 429 and 504; errors of
one request never reach another."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.engine.generation import GenerationSpec
from tests.api.helpers import ModelDirs, make_settings, serve

GOOD = {"class_label": 1, "steps": 2}

BAD_BODIES: list[tuple[str, Any, int, str]] = [
    # (case, JSON body, status, field named)
    ("label as string", {**GOOD, "class_label": "three"}, 422, "class_label"),
    ("label as bool", {**GOOD, "class_label": True}, 422, "class_label"),
    ("label as float", {**GOOD, "class_label": 1.5}, 422, "class_label"),
    ("label negative", {**GOOD, "class_label": -1}, 422, "class_label"),
    ("label out of range", {**GOOD, "class_label": 10}, 422, "class_label"),
    ("label missing", {"steps": 2}, 422, "class_label"),
    ("steps as string", {**GOOD, "steps": "5"}, 422, "steps"),
    ("steps fractional", {**GOOD, "steps": 5.5}, 422, "steps"),
    ("steps zero", {**GOOD, "steps": 0}, 422, "steps"),
    ("steps above T", {**GOOD, "steps": 1001}, 422, "steps"),
    ("steps huge", {**GOOD, "steps": 10**30}, 422, "steps"),
    ("steps null is default", {**GOOD, "steps": None}, 200, ""),
    ("unknown model", {**GOOD, "model": "nope"}, 404, "model"),
    ("too many images", {**GOOD, "num_images": 5}, 422, "num_images"),
    ("zero images", {**GOOD, "num_images": 0}, 422, "num_images"),
    ("steps and latency", {**GOOD, "latency_budget_ms": 100}, 422, "latency_budget_ms"),
    ("steps and max_fid", {**GOOD, "max_fid": 20}, 422, "max_fid"),
    ("latency and max_fid", {"class_label": 1, "latency_budget_ms": 100, "max_fid": 20}, 422, "max_fid"),
    ("negative budget", {"class_label": 1, "latency_budget_ms": -5}, 422, "latency_budget_ms"),
    ("budget as string", {"class_label": 1, "latency_budget_ms": "fast"}, 422, "latency_budget_ms"),
    ("unreachable fid", {"class_label": 1, "max_fid": 1.0}, 422, "max_fid"),
    ("uncalibrated fid", {"model": "tiny-raw", "class_label": 1, "max_fid": 20}, 422, "max_fid"),
    (
        "uncalibrated budget",
        {"model": "tiny-raw", "class_label": 1, "latency_budget_ms": 99},
        422,
        "latency_budget_ms",
    ),
    ("unknown sampler", {**GOOD, "sampler": "euler"}, 422, "sampler"),
    ("eta above 1", {**GOOD, "sampler": "ddim", "eta": 2}, 422, "eta"),
    ("eta with ddpm", {**GOOD, "eta": 0.5}, 422, "eta"),
    ("negative seed", {**GOOD, "seed": -1}, 422, "seed"),
    ("seed too large", {**GOOD, "seed": 2**64}, 422, "seed"),
    ("unknown format", {**GOOD, "response_format": "gif"}, 422, "response_format"),
    ("zero timeout", {**GOOD, "timeout_ms": 0}, 422, "timeout_ms"),
    ("timeout above cap", {**GOOD, "timeout_ms": 10**9}, 422, "timeout_ms"),
    ("stream as string", {**GOOD, "stream": "yes"}, 422, "stream"),
    ("misspelt field", {"class_label": 1, "step": 5}, 422, "step"),
    ("array body", [1, 2], 422, "body"),
    ("number body", 5, 422, "body"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_bad_field_is_named(client: TestClient, body: Any, status: int, field: str) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    if status >= 400:
        error = r.json()["error"]
        assert error["field"] == field
        assert field in error["message"] and error["code"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        ('{"class_label": 1,', {"content-type": "application/json"}, 400, "malformed_json"),
        ("", {"content-type": "application/json"}, 422, "invalid_request"),
        ('{"class_label": 1, "steps": NaN}', {"content-type": "application/json"}, 422, "invalid_request"),
        (
            '{"class_label": 1}',
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        ("x" * 100_000, {"content-type": "application/json"}, 413, "content_too_large"),
    ],
    ids=["truncated", "empty", "nan", "form-encoded", "huge"],
)
def test_malformed_bodies(client: TestClient, content: str, headers: dict, status: int, code: str) -> None:
    r = client.post("/generate", content=content, headers=headers)
    assert r.status_code == status, r.text
    if status == 413:  # answered by Starlette's body-size limit before any handler: plain text
        return
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] in ("body", "steps")


def test_other_routes_answer_json_errors(client: TestClient) -> None:
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    r = client.put("/generate")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    r = client.get("/v1/models/nope/tradeoff")
    assert r.status_code == 404 and r.json()["error"]["field"] == "name"


def test_bad_requests_do_not_disturb_a_good_one(client: TestClient) -> None:
    outcome: dict[str, Any] = {}

    def good() -> None:
        outcome["response"] = client.post("/generate", json={"class_label": 1, "steps": 30, "seed": 5})

    thread = threading.Thread(target=good)
    thread.start()
    for _, body, _, _ in BAD_BODIES[:12]:
        assert client.post("/generate", json=body).status_code < 500
    thread.join(60)
    response = outcome["response"]
    assert response.status_code == 200 and response.headers["x-steps"] == "30"
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_full_queue_answers_429_with_retry_after(model_dirs: ModelDirs) -> None:
    with serve(make_settings(model_dirs, max_batch=1, max_queue=1, max_num_images=1)) as client:
        pool = client.app.state.context.backend.pool("tiny")  # type: ignore[attr-defined]
        pool.submit(GenerationSpec("tiny", 1, 1000), "fill-running")
        deadline = time.monotonic() + 30
        while pool.loads()["cpu"].in_flight == 0:  # wait until it holds the only slot
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pool.submit(GenerationSpec("tiny", 1, 1000), "fill-queued")  # the queue (1 image) is now full
        try:
            r = client.post("/generate", json=GOOD)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "queue_full"
            assert int(r.headers["retry-after"]) >= 1
        finally:
            pool.cancel("fill-running")
            pool.cancel("fill-queued")
        metrics = client.get("/metrics").text
        assert 'ddpm_requests_total{k="le_10",model="tiny",sampler="ddpm",status="queue_full"} 1.0' in metrics


def test_deadline_answers_504(client: TestClient) -> None:
    r = client.post("/generate", json={"class_label": 1, "steps": 1000, "timeout_ms": 100})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    with client.stream(
        "POST", "/generate", json={"class_label": 1, "steps": 1000, "timeout_ms": 100, "stream": True}
    ) as s:
        text = s.read().decode()
    assert "event: error" in text and "deadline_exceeded" in text
