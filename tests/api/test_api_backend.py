"""The API against a scripted backend: readiness states and the HTTP status of every engine error."""

from __future__ import annotations

import pytest

from service.api.settings import Settings
from service.backends.base import UnknownModel
from service.engine import errors as engine
from tests.api.fakes import FakeBackend
from tests.api.helpers import serve

SETTINGS = Settings(model_dirs=["unused"], max_num_images=4, max_queue=8)


def test_readiness_follows_the_backend() -> None:
    backend = FakeBackend(is_ready=False)
    with serve(SETTINGS, backend, ready=False) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "warming_up"}
        assert client.get("/healthz").json() == {"status": "ok"}
        assert "ddpm_ready 0.0" in client.get("/metrics").text
        backend.is_ready = True
        assert client.get("/readyz").status_code == 200
        backend.is_alive = False
        assert client.get("/healthz").status_code == 503
        assert client.get("/readyz").json() == {"status": "dead"}
    assert backend.stopped


def test_unconditional_model_refuses_a_label() -> None:
    backend = FakeBackend()
    with serve(SETTINGS, backend) as client:
        r = client.post("/generate", json={"class_label": 1, "steps": 3})
        assert r.status_code == 422 and r.json()["error"]["field"] == "class_label"
        r = client.post("/generate", json={"steps": 3})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert backend.submitted[-1].class_label is None
        r = client.post("/generate", json={"steps": 101})
        assert r.status_code == 422 and "T=100" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (engine.QueueFull("full", retry_after=2.5), 429, "3"),
        (engine.EngineShuttingDown("stopping"), 503, "5"),
        (engine.EngineDead("dead"), 503, "5"),
        (engine.InvalidRequest("steps must be ..."), 422, None),
        (UnknownModel("no model"), 404, None),
        (RuntimeError("secret internals"), 500, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_submit_errors_map_to_statuses(error: Exception, status: int, retry_after: str | None) -> None:
    with serve(SETTINGS, FakeBackend(submit_error=error)) as client:
        r = client.post("/generate", json={"steps": 3})
        assert r.status_code == status
        assert r.headers.get("retry-after") == retry_after
        body = r.json()["error"]
        assert "secret" not in body["message"]
        assert body["code"] == getattr(error, "code", "internal_error")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (engine.DeadlineExceeded("late"), 504),
        (engine.NonFiniteOutput("nan"), 500),
        (engine.ExecutorFailed("device lost"), 503),
        (engine.Cancelled("cancelled"), 499),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_result_errors_map_to_statuses_and_stream_events(error: Exception, status: int) -> None:
    with serve(SETTINGS, FakeBackend(result_error=error)) as client:
        r = client.post("/generate", json={"steps": 3})
        assert r.status_code == status and r.json()["error"]["code"] == error.code
        with client.stream("POST", "/generate", json={"steps": 3, "stream": True}) as s:
            text = s.read().decode()
        assert s.status_code == 200 and "event: progress" in text and "event: error" in text
        metrics = client.get("/metrics").text
        assert f'status="{error.code}"' in metrics


def test_the_schema_publishes_every_limit_the_server_enforces() -> None:
    with serve(SETTINGS, FakeBackend()) as client:
        fields = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]

        def maximum(name: str) -> int:
            (bound,) = [o["maximum"] for o in fields[name].get("anyOf", [fields[name]]) if "maximum" in o]
            return int(bound)

        assert maximum("num_images") == 4 and maximum("steps") == 100
        assert maximum("timeout_ms") == SETTINGS.max_timeout_ms
        # This model has no calibration and no gamma.json: "auto" and "analytic" would only be refused.
        (sampler_enum,) = [o["enum"] for o in fields["sampler"]["anyOf"] if "enum" in o]
        assert sampler_enum == ["ddpm", "ddim", "dpm++2m"]
        (variance_enum,) = [o["enum"] for o in fields["variance"]["anyOf"] if "enum" in o]
        assert variance_enum == ["learned_range", "fixed_small", "fixed_large"]
        (timeout,) = [o for o in fields["timeout_ms"]["anyOf"] if o.get("type") == "integer"]
        assert timeout["minimum"] == SETTINGS.min_timeout_ms
        for name, value in (("num_images", 4), ("steps", 100), ("timeout_ms", SETTINGS.max_timeout_ms)):
            assert client.post("/generate", json={"steps": 3} | {name: value}).status_code == 200
            r = client.post("/generate", json={"steps": 3} | {name: value + 1})
            assert r.status_code == 422 and r.json()["error"]["field"] == name, r.text
