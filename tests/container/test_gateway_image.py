"""The gateway image, built by podman from the repository's own Dockerfile and run for real
(docker/gateway_image.py): it serves a PNG, runs as non-root, passes its HEALTHCHECK, is scraped by a
containerised Prometheus with docker/prometheus.yml so that every dashboard query has data, and drains on
SIGTERM. The build's timings and the image's size go to test-artifacts/container/build.json. Skipped,
with the reason, where podman cannot run containers (no podman, not root, a sandbox that
refuses it); `.ci/run` installs podman and debootstrap so that CI runs it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.container.script import load, unusable_reason
from tests.deploy.test_dashboard import query_texts, serve_sample_traffic

pytestmark = [pytest.mark.container, pytest.mark.slow]

gi = load()
REASON = unusable_reason()
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DDPM_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "container"
# A request that takes several seconds on the CPU and ends well inside the drain timeout (30 s).
SLOW_REQUEST = {"class_label": 2, "steps": 400, "num_images": 2}


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    if REASON is not None:
        pytest.skip(REASON)
    build = request.getfixturevalue("built_image")  # tests/container/conftest.py: built beside the suite
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "build.json").write_text(json.dumps(build))  # timings and size, for docs/deployment.md
    # Kept afterwards: removing 1.3 GB of layers took CI 23 s. The next build replaces it and prunes the
    # one before (gateway_image.build_gateway).
    return gi.GATEWAY_IMAGE


@pytest.fixture(scope="module")
def gateway(image: str) -> Iterator[Any]:
    container = gi.run_gateway(image, env=gi.SAMPLE_TRAFFIC_ENV)
    yield container
    container.remove()


def test_ready_and_serves_a_png(gateway: Any) -> None:
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    answer = httpx.post(f"{gateway.url}/generate", json={"class_label": 7, "steps": 10}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(answer.content))
    assert picture.size == (28, 28) and picture.mode == "L"


def test_the_server_runs_as_the_images_non_root_user(gateway: Any) -> None:
    assert gi.server_uid(gateway) == 10001  # docker/Dockerfile.gateway: useradd --uid 10001 ddpm


def test_the_images_healthcheck_passes_in_the_container(gateway: Any) -> None:
    gi.healthcheck(gateway)  # raises ContainerError, with podman's output, when unhealthy


def test_every_dashboard_query_has_data_from_a_containerised_prometheus(gateway: Any) -> None:
    serve_sample_traffic(gateway.url, *gi.SAMPLE_TRAFFIC_K)
    results = gi.prometheus_queries(query_texts())
    empty = [query for query, series in results.items() if not series]
    assert not empty, f"dashboard queries without data: {empty}"


def test_sigterm_drains_the_request_in_flight(gateway: Any) -> None:
    """Last: it stops the container."""
    drain = gi.sigterm_drain(gateway, SLOW_REQUEST)
    logs = gateway.logs()
    assert not drain.errors, (drain, logs)
    assert drain.status_code == 200 and drain.png, (drain, logs)
    assert drain.refused_after_term, drain
    assert drain.exit_code == 0, (drain, logs)
