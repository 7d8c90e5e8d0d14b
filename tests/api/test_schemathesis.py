"""The OpenAPI fuzzer against a live server: every phase (examples, coverage, fuzzing, stateful), every
check, a fixed seed; zero failures, at least 1,000 cases. It holds the schema to its promise: a request
valid by the published schema is served (or refused only for load: 429, 503), and an invalid one is
refused with a 4xx, never a 5xx.

The served model is the tiny-test network with T = 20 and a calibration table, so each case takes
milliseconds; the published limits (num_images, timeout_ms, latency_budget_ms, K <= T, the label range,
the best calibrated FID per sampler) are this server's, read from /openapi.json like any client's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from service.api.settings import Settings
from tests.api.helpers import table_model
from tests.live_server import served

pytestmark = pytest.mark.slow

SEED = 7
EXAMPLES_PER_OPERATION = 200
MIN_CASES = 1000
TABLE = (
    ("ddpm", 5, 30.0),
    ("ddpm", 10, 20.0),
    ("ddpm", 20, 12.0),
    ("dpm++2m", 5, 14.0),
    ("dpm++2m", 10, 9.0),
    ("ddim", 10, 15.0),
    ("fixed-small", 20, 8.0),
)
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which(
    "schemathesis"
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        model_dirs=[table_model(tmp_path_factory.mktemp("fuzz"), "fast", TABLE, num_timesteps=20)],
        device="cpu",
        max_batch=4,
        max_queue=16,
        max_num_images=2,
        compile=False,
        warmup_iterations=1,
        default_steps=5,
        torch_threads=1,
        # Deadlines and budgets no load on a CI machine can miss at T = 20: a 504 or an unreachable
        # budget would be a fuzzing failure caused by the machine, not by the server.
        min_timeout_ms=5_000,
        default_timeout_ms=10_000,
        max_timeout_ms=10_000,
        min_latency_budget_ms=5_000,
    )
    with served(create_app(settings)) as base:
        yield base


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis not installed (pip install -e '.[dev]')")
def test_the_fuzzer_finds_nothing(base_url: str, tmp_path: Path) -> None:
    assert SCHEMATHESIS is not None
    command = [
        SCHEMATHESIS,
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = done.stdout + done.stderr
    summary = re.search(r"(\d+) generated, (.*)", output)
    assert done.returncode == 0 and summary is not None, output[-6000:]
    generated = int(summary.group(1))
    assert summary.group(2).startswith(f"{generated} passed"), output[-6000:]
    assert generated >= MIN_CASES, output[-3000:]
