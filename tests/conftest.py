"""Shared fixtures: small randomly initialised models (no download, no training)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, random_model_dir

# Servers started by the tests (in process or as child processes inheriting this environment) serve eager:
# the server's default compiles in the background on the CPU, minutes of CPU time per server on these
# machines. The tests of compilation itself ask for it explicitly.
os.environ.setdefault("DDPM_COMPILE", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder of the tiny-test preset (16x16 RGB, 10 classes, learned sigma, T = 1000)."""
    return random_model_dir(get_preset("tiny-test"), tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir)
