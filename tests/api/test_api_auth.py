"""Optional API keys (service/api/auth.py): with keys configured no route but the public ones answers
without a valid key, keys never reach the logs, and per-key limits answer 429 with Retry-After."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api.auth import PAGE_PATHS, AuthSettings, KeyLimits, key_id, read_keys
from service.api.settings import Settings, SettingsError
from tests.api.helpers import ModelDirs, make_settings, serve

KEY = "k-0123456789abcdef-first"
OTHER = "k-0123456789abcdef-other"
BEARER = {"Authorization": f"Bearer {KEY}"}
PUBLIC = {"/healthz", "/readyz", "/metrics"} | PAGE_PATHS  # the playground's files hold no data


@pytest.fixture(scope="module")
def client(model_dirs: ModelDirs) -> Iterator[TestClient]:
    settings = make_settings(model_dirs, api_keys=f"{KEY},{OTHER}", key_rate_per_s=0.001, key_burst=2)
    with serve(settings) as client:
        yield client


def routes(container: Any) -> Iterator[Any]:
    """Every route, into included routers too (FastAPI wraps each in an object holding the original)."""
    for route in container.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from routes(inner)
        else:
            yield route


def every_path(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route the app has, documented or not, with path parameters filled."""
    found = []
    for route in routes(client.app):
        methods = sorted(getattr(route, "methods", None) or {"GET"})
        path = route.path.replace("{name}", "tiny")
        found += [(method, path) for method in methods if method != "HEAD"]
    assert any(isinstance(r, APIRoute) and r.path == "/generate" for r in routes(client.app))
    return found


def test_no_route_but_the_public_ones_answers_without_a_valid_key(client: TestClient) -> None:
    paths = every_path(client)
    assert {"/docs", "/openapi.json", "/generate", "/v1/models", "/"} <= {p for _, p in paths}
    for page in PAGE_PATHS:  # the page loads without a key, then asks for one
        assert client.get(page).status_code == 200, page
    for method, path in [*paths, ("GET", "/no-such-path")]:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {KEY}"}):
            r = client.request(method, path, headers=headers)
            if path in PUBLIC:
                assert r.status_code != 401, (method, path)
                continue
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="ddpm-serve"')
            assert r.json()["error"]["code"] == "unauthorized"
        if path not in PUBLIC:
            assert client.request(method, path, headers=BEARER).status_code != 401, (method, path)


def test_a_wrong_token_is_named_as_invalid(client: TestClient) -> None:
    r = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_a_valid_key_generates_and_the_rate_limit_answers_429_with_retry_after(client: TestClient) -> None:
    body = {"class_label": 1, "steps": 2, "seed": 1}
    other = {"Authorization": f"Bearer {OTHER}"}
    assert [client.post("/generate", json=body, headers=other).status_code for _ in range(2)] == [200, 200]
    r = client.post("/generate", json=body, headers=other)  # burst of 2 spent, 0.001 per second
    assert r.status_code == 429 and r.json()["error"]["code"] == "key_rate_limit"
    assert int(r.headers["Retry-After"]) >= 1
    assert client.post("/generate", json=body, headers=BEARER).status_code == 200  # another key's bucket
    text = client.get("/metrics").text
    assert f'ddpm_auth_refused_total{{code="key_rate_limit",key="{key_id(OTHER)}"}} 1.0' in text


def test_the_schema_declares_the_bearer_scheme_except_on_public_paths(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=BEARER).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_keys_never_reach_the_logs_or_the_settings_repr(
    model_dirs: ModelDirs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(model_dirs, api_keys=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    with serve(settings) as client:
        client.post("/generate", json={"class_label": 1, "steps": 2}, headers=BEARER)
        client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"})
    assert caplog.records and all(KEY not in record.getMessage() for record in caplog.records)
    assert any(key_id(KEY) in record.getMessage() for record in caplog.records)


def test_concurrency_limit_per_key() -> None:
    limits = KeyLimits(AuthSettings((KEY,), frozenset(), max_concurrency=1))
    assert limits.acquire("a") is None
    refusal = limits.acquire("a")
    assert refusal is not None and refusal.status == 429 and refusal.code == "key_concurrency_limit"
    assert limits.acquire("b") is None  # per key
    limits.release("a")
    assert limits.acquire("a") is None and limits.in_flight("a") == 1


def test_key_files_and_weak_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# ops\n{KEY}\n\n{OTHER}  # second\n{KEY}\n")
    assert read_keys([], str(keys)) == (KEY, OTHER)
    auth = Settings(api_keys_file=keys).auth()
    assert auth is not None and auth.keys == (KEY, OTHER)
    assert auth.public_paths == frozenset(PUBLIC) - PAGE_PATHS  # the setting's default; pages are apart
    assert Settings().auth() is None  # no keys: no authentication
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(api_keys="short")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SettingsError, match="holds no key"):
        Settings(api_keys_file=tmp_path / "empty").auth()
