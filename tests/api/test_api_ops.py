"""Models and trade-off tables, metrics exposition, OpenAPI docs, settings and the CLI's startup errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.metrics import Metrics
from service.api.settings import Settings, SettingsError
from service.cli.serve import main as serve_main

METRIC_NAMES = (
    "ddpm_requests_total",
    "ddpm_request_duration_seconds_bucket",
    "ddpm_queue_wait_seconds_bucket",
    "ddpm_step_duration_seconds_bucket",
    "ddpm_batch_occupancy_ratio_bucket",
    "ddpm_batch_rows_bucket",
    "ddpm_images_total",
    "ddpm_unet_evaluations_total",
    "ddpm_unet_batches_total",
    "ddpm_queue_depth",
    "ddpm_in_flight_rows",
    "ddpm_device_memory_bytes",
    "ddpm_warmup_seconds",
    "ddpm_ready",
    "ddpm_calibrated_fid",
    "ddpm_calibrated_precision_ratio",
    "ddpm_calibrated_recall_ratio",
    "ddpm_calibrated_class_accuracy_ratio",
    "ddpm_calibrated_bits_per_dim",
    "ddpm_calibrated_image_seconds",
)


# The fixture's table: ddpm at K = 5, 10, 20 and ddim at K = 10 with a worse FID than ddpm's there.
FRONTIER = [("ddpm", 5), ("ddpm", 10), ("ddpm", 20)]


def test_models_lists_both_with_calibrated_sets(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert list(models) == ["tiny", "tiny-raw"]
    tiny = models["tiny"]
    assert tiny["num_timesteps"] == 1000 and tiny["num_classes"] == 10 and tiny["image_size"] == 16
    assert tiny["calibrated_steps"] == {"ddpm": [5, 10, 20], "ddim": [10]}
    assert [(p["sampler"], p["steps"]) for p in tiny["frontier"]] == FRONTIER
    assert models["tiny-raw"]["calibrated_steps"] == {} and models["tiny-raw"]["frontier"] == []
    assert client.get("/v1/models/tiny-raw").json()["name"] == "tiny-raw"


def test_tradeoff_merges_live_latency(client: TestClient) -> None:
    assert client.post("/generate", json={"class_label": 0, "steps": 10}).status_code == 200
    table = client.get("/v1/models/tiny/tradeoff").json()
    assert table["calibrated"] and table["machine"] == "test"
    by_key = {(p["sampler"], p["steps"]): p for p in table["points"]}
    assert by_key[("ddpm", 5)]["fid"] == 30.0
    live = by_key[("ddpm", 10)]["live_latency"]
    assert live["count"] >= 1 and 0 < live["p50_ms"] <= live["p99_ms"]
    assert table["live_latency"]["10"] == live
    raw = client.get("/v1/models/tiny-raw/tradeoff").json()
    assert raw["calibrated"] is False and raw["points"] == []


def test_metrics_exposes_the_ddpm_names(client: TestClient) -> None:
    assert client.post("/generate", json={"class_label": 0, "steps": 3}).status_code == 200
    assert client.post("/generate", json={"class_label": 99, "steps": 3}).status_code == 422
    assert client.post("/generate", json={"class_label": 0, "steps": "3"}).status_code == 422
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    missing = [name for name in METRIC_NAMES if f"\n{name}{{" not in text and f"\n{name} " not in text]
    assert not missing
    # K=3 is neither configured nor calibrated: bucketed. A body refused before the model and K are known
    # has neither; the engine's refusal of a label comes after both are, and is counted under them.
    assert 'ddpm_requests_total{k="le_10",model="tiny",sampler="ddpm",status="ok"}' in text
    assert 'ddpm_requests_total{k="le_10",model="tiny",sampler="ddpm",status="invalid_request"}' in text
    assert 'ddpm_requests_total{k="none",model="unknown",sampler="none",status="invalid_request"}' in text
    assert 'ddpm_calibrated_fid{k="20",model="tiny",sampler="ddpm"} 12.0' in text


def test_openapi_documents_generate(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    generate = spec["paths"]["/generate"]["post"]
    assert {"200", "422", "429", "504"} <= set(generate["responses"])
    assert "image/png" in generate["responses"]["200"]["content"]
    schema = spec["components"]["schemas"]["GenerateRequest"]
    assert "latency_budget_ms" in schema["properties"] and schema["properties"]["steps"]["description"]
    assert client.get("/docs").status_code == 200


def test_the_server_compiles_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default (the CPU in the background, CUDA at warm-up); tests/conftest.py turns it off for the
    test servers through the same variable a user would set."""
    monkeypatch.delenv("DDPM_COMPILE", raising=False)
    assert Settings().compile is True


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDPM_MODEL_DIRS", f"{tmp_path}/a, {tmp_path}/b")
    monkeypatch.setenv("DDPM_PORT", "9001")
    monkeypatch.setenv("DDPM_METRIC_STEPS", "[50, 10]")
    monkeypatch.setenv("DDPM_COMPILE", "false")
    settings = Settings()
    assert settings.model_dirs == [tmp_path / "a", tmp_path / "b"]
    assert settings.port == 9001 and settings.metric_steps == (10, 50) and settings.compile is False
    with pytest.raises(SettingsError, match="DDPM_MODEL_DIRS"):
        settings.resolved_model_dirs()
    with pytest.raises(ValueError, match="max_num_images"):
        Settings(max_num_images=10, max_queue=5)


def test_idle_connections_outlive_common_client_and_proxy_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().keep_alive_s > 60  # httpx expires idle connections at 5 s, nginx and cloud LBs at 60 s
    monkeypatch.setenv("DDPM_KEEP_ALIVE_S", "0")
    with pytest.raises(ValueError, match="keep_alive_s"):
        Settings()


def test_cli_reports_a_missing_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "DDPM_MODEL_DIRS" in err and "Traceback" not in err


def test_compiled_batch_sizes_are_counted_once_across_executor_restarts() -> None:
    metrics = Metrics((10,))
    observer = metrics.observer_for("m")
    for size in (16, 1, 16):  # 16 again: a restarted executor reports its sizes anew
        observer.on_compiled("cpu", size, 2.0)
    text = metrics.exposition().decode()
    assert 'ddpm_compiled_batch_sizes{engine="cpu",model="m"} 2.0' in text
    assert 'ddpm_compile_seconds_total{engine="cpu",model="m"} 6.0' in text
