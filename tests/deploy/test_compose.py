"""docker-compose.yml (and its CPU override) validate against the Compose specification schema.

Debian's docker-compose (1.29) validates with the schema it ships (compose_spec.json) and needs no
engine for `config`; CI installs it (apt-get install docker-compose)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import COMPOSE_FILES, ROOT

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)"
)


def compose(*args: str, files: tuple[Path, ...] = COMPOSE_FILES[:1]) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    command = [COMPOSE, "--project-directory", str(ROOT)]
    for path in files:
        command += ["-f", str(path)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_compose
@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["gpu", "cpu-override"])
def test_compose_files_validate(files: tuple[Path, ...]) -> None:
    result = compose("config", "-q", files=files)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_the_validator_rejects_what_the_schema_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  gateway:\n    image: x\n    gpus_please: true\n")
    result = compose("config", "-q", files=(bad,))
    assert result.returncode != 0 and "gpus_please" in result.stderr


@needs_compose
def test_compose_runs_the_four_services_with_a_gpu_for_triton() -> None:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for service in ("gateway:", "triton:", "prometheus:", "grafana:"):
        assert f"\n  {service}\n" in text, service
    triton = text.split("\n  triton:\n")[1]
    assert "driver: nvidia" in triton and "gpu" in triton
    cpu = compose("config", files=COMPOSE_FILES).stdout
    assert "DDPM_BACKEND: embedded" in cpu and "- gpu" in cpu.split("\n  triton:\n")[1]
