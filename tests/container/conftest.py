"""The image build runs beside the rest of the suite: it waits mostly on the network and the disk
(debootstrap's downloads, pip's, layer commits), about five minutes on a 2-core machine, which CI's time
limit cannot take serially. So, once collection is done, `docker/gateway_image.py --build-only` starts in
a child process, the container tests are moved to the end of the run, and their first fixture waits for
that child. Selecting no container test starts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import IO, Any

import pytest

from tests.container.script import SCRIPT, unusable_reason

BUILD_TIMEOUT_S = 1800


class BackgroundBuild:
    """The child process building the image, and where its messages go."""

    def __init__(self) -> None:
        # Kept open for the build's life; closed in stop().
        self.log: IO[str] = tempfile.NamedTemporaryFile("w+", prefix="ddpm-image-build-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--build-only"], stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def result(self) -> dict[str, Any]:
        """The build's report ({base_seconds, build_seconds, image_bytes}); fails the test with the
        build's own messages when it failed."""
        out, _ = self.process.communicate(timeout=BUILD_TIMEOUT_S)
        if self.process.returncode != 0:
            self.log.seek(0)
            pytest.fail(f"building the gateway image failed:\n{self.log.read()[-6000:]}", pytrace=False)
        report: dict[str, Any] = json.loads(out.splitlines()[-1])
        return report

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


_build: BackgroundBuild | None = None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    global _build
    container = [item for item in items if item.get_closest_marker("container")]
    if not container:
        return
    items[:] = [item for item in items if not item.get_closest_marker("container")] + container
    if unusable_reason() is None and _build is None:
        _build = BackgroundBuild()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _build is not None:
        _build.stop()


@pytest.fixture(scope="session")
def built_image() -> dict[str, Any]:
    """Waits for the background build (started at collection) and returns its report."""
    assert _build is not None, "the container tests were collected without the build being started"
    return _build.result()
