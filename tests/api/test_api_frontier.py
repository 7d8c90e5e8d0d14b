"""(sampler, K) chosen from the calibrated frontier: latency budgets and FID targets without a sampler
pick the frontier's pair, `sampler: "auto"` the best variant at a K, and a request that names a sampler
(or gives only steps) keeps it. On a known table, over HTTP, with real images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.model.gamma_table import GammaTable, write_gamma
from service.quality.tradeoff import TradeoffPoint
from tests.api.helpers import ModelDirs, make_settings, serve, table_model

# (variant, K, FID) at 64 samples. Frontier without analytic: dpm++2m 5, dpm++2m 10, fixed-small 20.
TABLE = (
    ("ddpm", 5, 30.0),
    ("ddpm", 10, 20.0),
    ("ddpm", 20, 12.0),
    ("dpm++2m", 5, 14.0),
    ("dpm++2m", 10, 9.0),
    ("fixed-small", 10, 15.0),
    ("fixed-small", 20, 8.0),
    ("analytic", 10, 8.5),  # only runnable (and on the frontier) where the model has gamma.json
)
FEW_SAMPLES = TradeoffPoint("ddim", 5, 16, 1.0, 0.5, 0.5, None, 0.01)  # fewer samples: no rival


def _table_model(root: Path, name: str, with_gamma: bool) -> Path:
    model_dir = table_model(root, name, TABLE, extra=(FEW_SAMPLES,))
    if with_gamma:
        steps = (0, 500, 999)
        write_gamma(model_dir, GammaTable(steps, (0.2, 0.9, 1.0), 1000, 4, 0, "test: made up"))
    return model_dir


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("frontier")
    dirs = ModelDirs(_table_model(root, "plain", False), _table_model(root, "gamma", True))
    with serve(make_settings(dirs)) as client:
        yield client


def _generate(client: TestClient, **fields: object) -> dict:
    body = {"class_label": 1, "response_format": "json", "seed": 3, **fields}
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _pair(body: dict) -> tuple[str, str | None, int, str]:
    return body["sampler"], body["variance"], body["steps"], body["selection"]["sampler_mode"]


def test_the_frontier_is_published_per_model(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert [(p["sampler"], p["steps"]) for p in models["plain"]["frontier"]] == [
        ("dpm++2m", 5), ("dpm++2m", 10), ("fixed-small", 20),
    ]  # fmt: skip
    assert [(p["sampler"], p["steps"]) for p in models["gamma"]["frontier"]] == [
        ("dpm++2m", 5), ("analytic", 10), ("fixed-small", 20),
    ]  # fmt: skip
    assert "analytic" not in models["plain"]["variances"] and "analytic" in models["gamma"]["variances"]
    rows = client.get("/v1/models/gamma/tradeoff").json()["points"]
    on = {(r["sampler"], r["steps"]) for r in rows if r["on_frontier"]}
    assert on == {("dpm++2m", 5), ("analytic", 10), ("fixed-small", 20)}
    analytic = next(r for r in rows if r["sampler"] == "analytic")
    assert analytic["request"] == {"sampler": "ddpm", "variance": "analytic"}


def test_an_fid_target_without_a_sampler_takes_the_cheapest_frontier_point(client: TestClient) -> None:
    assert _pair(_generate(client, model="plain", max_fid=10)) == ("dpm++2m", None, 10, "frontier")
    body = _generate(client, model="plain", max_fid=8.5)
    assert _pair(body) == ("ddpm", "fixed_small", 20, "frontier")
    assert "fixed-small K=20" in body["selection"]["reason"]
    # Where the model has its Gamma table, analytic variance joins the frontier and wins at K=10.
    assert _pair(_generate(client, model="gamma", max_fid=8.5)) == ("ddpm", "analytic", 10, "frontier")


def test_a_latency_budget_without_a_sampler_takes_the_best_frontier_point_that_fits(
    client: TestClient,
) -> None:
    assert _pair(_generate(client, model="plain", latency_budget_ms=600_000)) == (
        "ddpm", "fixed_small", 20, "frontier",
    )  # fmt: skip


def test_a_named_sampler_keeps_its_own_points(client: TestClient) -> None:
    body = _generate(client, model="plain", max_fid=13, sampler="ddpm")
    assert _pair(body) == ("ddpm", "learned_range", 20, "request")
    body = _generate(client, model="plain", max_fid=16, sampler="ddpm", variance="fixed_small")
    assert _pair(body) == ("ddpm", "fixed_small", 10, "request")


def test_auto_takes_the_best_variant_at_the_nearest_calibrated_k(client: TestClient) -> None:
    assert _pair(_generate(client, model="plain", steps=10, sampler="auto")) == ("dpm++2m", None, 10, "auto")
    body = _generate(client, model="plain", steps=16, sampler="auto")  # nearest calibrated K: 20
    assert _pair(body) == ("ddpm", "fixed_small", 16, "auto")
    assert "nearest to 16" in body["selection"]["reason"]


def test_steps_alone_keep_the_papers_method(client: TestClient) -> None:
    body = _generate(client, model="plain", steps=5)
    assert _pair(body) == ("ddpm", "learned_range", 5, "default")
    body = {"class_label": 1, "steps": 5, "model": "gamma"}
    r = client.post("/generate", json=body | {"sampler": "dpm++2m"})
    assert r.status_code == 200 and r.headers["x-sampler"] == "dpm++2m" and "x-variance" not in r.headers
    r = client.post("/generate", json=body | {"variance": "analytic"})
    assert r.status_code == 200 and (r.headers["x-sampler"], r.headers["x-variance"]) == ("ddpm", "analytic")
    assert r.headers["x-sampler-choice"] == "request" and r.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"steps": 5, "variance": "analytic"}, "variance", "ddpm gamma"),  # no gamma.json
        ({"steps": 5, "sampler": "ddim", "variance": "fixed_small"}, "variance", "ddpm' only"),
        ({"steps": 5, "sampler": "auto", "variance": "fixed_small"}, "variance", "omit variance"),
        ({"steps": 5, "eta": 0.5}, "eta", "ddim"),
        ({"steps": 5, "sampler": "dpm++2m", "eta": 0.5}, "eta", "ddim"),
        ({"steps": 5, "sampler": "euler"}, "sampler", "dpm++2m"),
    ],
)
def test_bad_sampler_fields_are_refused_naming_the_field(
    client: TestClient, fields: dict, field: str, words: str
) -> None:
    r = client.post("/generate", json={"class_label": 1, "model": "plain", **fields})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_the_analytic_variance_image_differs_from_the_learned_one(client: TestClient) -> None:
    """The variance really changes the step: same seed and K, different Sigma, different pixels."""
    learned = _generate(client, model="gamma", steps=5, sampler="ddpm")
    analytic = _generate(client, model="gamma", steps=5, variance="analytic")
    assert learned["images"] != analytic["images"]
    assert np.isfinite([learned["steps"], analytic["steps"]]).all()
