"""`python -m loadtest.gateway_capacity`: the instant worker, the profile summary, and a real gateway over a
real tritonserver for a handful of requests. Bookkeeping only: nothing here asserts on CPU time or speed."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest import gateway_capacity
from loadtest.gateway_capacity import GatewayConfig, instant_repo, instant_workers, measure
from loadtest.gateway_results import CapacityResult, summarize
from loadtest.instant_worker import fixed_image, image_shape
from loadtest.server import Server
from service.api.context import get_context
from service.api.routes import generate
from service.triton_worker.launcher import missing_reason

MODEL_DIR = gateway_capacity.MODEL_DIR


def test_instant_image_has_the_manifests_shape(tmp_path: Path) -> None:
    assert image_shape(MODEL_DIR) == (28, 28, 1)  # the bundled model: 1 x 28 x 28
    image = fixed_image((28, 28, 1))
    assert image.dtype == np.uint8 and image.shape == (28, 28, 1) and len(np.unique(image)) > 1
    repo = instant_repo(MODEL_DIR, tmp_path)
    model = repo / MODEL_DIR.name
    # The deployed config (same Triton name, tensors and decoupled policy); only model.py differs.
    assert (model / "config.pbtxt").read_text() == (MODEL_DIR / "config.pbtxt").read_text()
    assert "class TritonPythonModel" in (model / "1" / "model.py").read_text()


def test_profile_summary_counts_self_and_inclusive_time() -> None:
    site = "/venv/lib/python3.11/site-packages"
    stdlib = "/usr/lib/python3.11"
    collapsed = "\n".join(
        [
            f"main (/repo/service/cli/serve.py:9);run ({stdlib}/asyncio/base_events.py:1);"
            f"generate (/repo/service/api/routes/generate.py:70);dump_json ({site}/pydantic/main.py:5) 6",
            "main (/repo/service/cli/serve.py:9);generate (/repo/service/api/routes/generate.py:71) 3",
            f"main (/repo/service/cli/serve.py:9);select ({stdlib}/selectors.py:2) 1",
            'process 7:"ddpm-serve";not a frame 2',
        ]
    )
    summary = summarize(collapsed)
    assert summary.samples == 10  # the line without frames is skipped
    assert dict(summary.packages) == {"pydantic": 6, "service.api.routes": 3, "stdlib selectors": 1}
    assert dict(summary.functions)["generate (routes/generate.py)"] == 3
    ours = dict(summary.ours)
    assert ours["main (cli/serve.py)"] == 10 and ours["generate (routes/generate.py)"] == 9  # once a stack
    assert "`dump_json (pydantic/main.py)` | 60.0 %" in summary.markdown("Profile")


@pytest.mark.slow
def test_gateway_over_an_instant_worker(tmp_path: Path) -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with instant_workers(MODEL_DIR, 1, tmp_path) as workers:
        config = GatewayConfig(MODEL_DIR, triton_urls=tuple(w.url for w in workers))
        with Server(config) as gateway:
            body = {"class_label": 3, "steps": 10, "seed": 1}
            png = httpx.post(f"{gateway.base_url}/generate", json=body, timeout=30, trust_env=False)
            answer = httpx.post(
                f"{gateway.base_url}/generate",
                json={**body, "response_format": "json"},
                timeout=30,
                trust_env=False,
            )
            windows = [measure("current", gateway, workers, f, 8, 2) for f in ("json", "png")]

    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), fixed_image((28, 28, 1))[..., 0])
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["steps"] == 10 and data["num_images"] == 1 and len(data["images"]) == 1
    assert Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).size == (28, 28)

    assert [w.ok for w in windows] == [8, 8]  # measure raises unless every answer is a 200
    for window in windows:
        assert window.gateway_cpu_s >= 0 and window.wall_s > 0
        assert set(window.threads_cpu_s) >= {gateway_capacity.MAIN_THREAD}
    result = CapacityResult(windows, 8, 2, 1, {}, [("some other process", 3.0)], 1.0)
    text = result.markdown("# header")
    assert "| current | **" in text and "`some other process` 3 s" in text and "Bar —" in text


def test_the_fixes_it_measured_stay_off_worker_threads() -> None:
    """docs/gateway-capacity.md: a worker-thread hop per request cost the event loop more than the work it
    moved. The route's context is a coroutine (FastAPI would run a plain function in a thread), and a
    small PNG is encoded on the event loop; a large one still goes to a worker thread."""
    assert asyncio.iscoroutinefunction(get_context)
    here = threading.get_ident()
    small = asyncio.run(generate._encode(28 * 28, threading.get_ident))
    large = asyncio.run(generate._encode(generate.INLINE_PNG_VALUES + 1, threading.get_ident))
    assert small == here and large != here
