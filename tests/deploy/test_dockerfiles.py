"""Every Dockerfile's COPY sources exist and survive .dockerignore, which keeps the rest of the repository
out of the build context; compose builds existing files."""

from __future__ import annotations

import re
import shlex
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.deploy.conftest import COMPOSE_FILES, DOCKER, ROOT

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
DOCKERIGNORE = ROOT / ".dockerignore"


def copy_sources(dockerfile: Path) -> list[str]:
    """Sources of COPY/ADD lines that read the build context (not --from=another stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())  # join continued lines
    sources = []
    for line in text.splitlines():
        words = shlex.split(line.strip(), comments=True) if line.strip() else []
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = words[1:]
        if any(arg.startswith("--from") for arg in args):
            continue
        paths = [arg for arg in args if not arg.startswith("--")]
        sources += paths[:-1]  # the last one is the destination
    return sources


def ignored(path: str, dockerignore: Path) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes (prefix matching for folders)."""
    excluded = False
    for raw in dockerignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch(path, pattern) or path.startswith(pattern + "/") or pattern.startswith(path + "/"):
            excluded = not negate
    return excluded


def test_there_are_dockerfiles() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.gateway", "Dockerfile.triton"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist(dockerfile: Path) -> None:
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing?"
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"{dockerfile.name}: COPY sources missing from the build context: {missing}"
    dropped = [s for s in sources if ignored(s.rstrip("/"), DOCKERIGNORE)]
    assert not dropped, f".dockerignore excludes COPY sources: {dropped}"


@pytest.mark.parametrize("path", ["runs", "tests", ".venv", ".git", "docs", "test-artifacts", ".mypy_cache"])
def test_dockerignore_keeps_the_rest_out_of_the_context(path: str) -> None:
    assert ignored(path, DOCKERIGNORE)


def test_dockerignore_keeps_caches_out_of_copied_folders() -> None:
    assert ignored("service/__pycache__", DOCKERIGNORE)


def test_copied_model_is_a_triton_model_folder() -> None:
    model = ROOT / "model_store" / "fmnist-small"
    assert (model / "config.pbtxt").is_file() and (model / "1" / "model.py").is_file()
    assert 'name: "fmnist-small"' in (model / "config.pbtxt").read_text()


def test_compose_builds_these_dockerfiles() -> None:
    compose = COMPOSE_FILES[0].read_text()
    for match in re.findall(r"dockerfile:\s*(\S+)", compose):
        assert (ROOT / match).is_file(), match
