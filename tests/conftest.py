"""Shared fixtures: small randomly initialised models (no download, no training)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import service.engine.compile
from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, random_model_dir

# Servers started by the tests (in process or as child processes inheriting this environment) serve eager:
# the server's default compiles in the background on the CPU, minutes of CPU time per server on these
# machines. The tests of compilation itself ask for it explicitly.
os.environ.setdefault("DDPM_COMPILE", "false")
# Likewise fp32: on a CPU with native bf16 the default precision is bf16, and the parity tests compare with
# the fp32 reference. Tests of the bf16 choice patch native_bf16 themselves.
os.environ.setdefault("DDPM_PRECISION", "fp32")
# And in this process: EngineSettings() resolves AUTO as on a CPU without native bf16, for every fixture
# whatever its scope.
service.engine.compile.native_bf16 = lambda: False  # type: ignore[assignment]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder of the tiny-test preset (16x16 RGB, 10 classes, learned sigma, T = 1000)."""
    return random_model_dir(get_preset("tiny-test"), tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA device: skipped, with the reason, where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: a parameter id may be "gpu"
            item.add_marker(skip)
