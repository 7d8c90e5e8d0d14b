"""docker/gateway_image.py, loaded once for the container tests and their conftest (docker/ is not a
package: it holds build files and the script that checks them)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "gateway_image.py"


def load() -> ModuleType:
    if "gateway_image" in sys.modules:
        return sys.modules["gateway_image"]
    spec = importlib.util.spec_from_file_location("gateway_image", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@functools.cache
def unusable_reason() -> str | None:
    """Why podman cannot build and run containers here (the tests' skip reason), or None."""
    reason: str | None = load().unusable_reason()
    return reason
