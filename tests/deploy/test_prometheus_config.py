"""docker/prometheus.yml passes `promtool check config` (Debian package prometheus; CI installs it) and
scrapes the compose services on their ports."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.conftest import DOCKER, ROOT

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_config() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(DOCKER / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_targets_are_the_compose_services() -> None:
    config = (DOCKER / "prometheus.yml").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    # The gateway serves /metrics on its API port; Triton on its metrics port (8002).
    assert '"gateway:8000"' in config and '"8000:8000"' in compose
    assert '"triton:8002"' in config and '"8002"' in compose
