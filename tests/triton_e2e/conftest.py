"""Triton test fixtures: a model repository holding one tiny random model, and real tritonserver processes.

Real-server tests are marked slow and skipped, with the reason, where the nvidia-pytriton wheel (the
tritonserver binary) or tritonclient is missing. Every torch process uses one thread (2 shared cores).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.triton_worker.launcher import TritonProcess, missing_reason
from service.triton_worker.repo import write_triton_model

MODEL = "tiny"  # folder name = Triton model name = manifest name
# fp32 and eager: the worker runs in Triton's process, where tests/conftest.py's fp32 resolution of AUTO
# does not reach, and the gateway tests compare its images with the embedded engine's (eager), byte for
# byte; a worker compiles by default, which here would only build packages beside the tests.
WORKER_PARAMETERS = {
    "max_batch": "4",
    "max_queue": "32",
    "warmup_iterations": "1",
    "torch_threads": "1",
    "precision": "fp32",
    "compile": "false",
}


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository laid out as model_store/ is: <name>/model.json + config.pbtxt + 1/."""
    repo = tmp_path_factory.mktemp("triton-repo")
    model_dir = random_model_dir(get_preset("tiny-test"), repo / MODEL, seed=0, name=MODEL)
    write_triton_model(model_dir, WORKER_PARAMETERS)
    return repo


@pytest.fixture(scope="session")
def start_triton(
    triton_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TritonProcess]]:
    """Start a tritonserver (optionally on given ports); every one is stopped at the end of the session."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = tmp_path_factory.mktemp("triton-work")
    started: list[TritonProcess] = []

    def start(**ports: int) -> TritonProcess:
        server = TritonProcess(triton_repo, [MODEL], workdir, **ports)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
