"""Deployment checks that need no Docker engine: compose files against the Compose schema, Prometheus's
config through promtool, Dockerfile COPY sources, and the dashboard's queries against a live gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml")
DASHBOARD = DOCKER / "grafana" / "dashboards" / "ddpm.json"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
