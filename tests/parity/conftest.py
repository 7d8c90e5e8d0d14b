"""Fixtures for parity tests against the golden vectors: golden networks and an error report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from torch import nn

from service.model.factory import build_model
from tests.golden import ERRORS_KEY, golden_image_size, load_meta, load_weights, unet_config_from_meta


@pytest.fixture(scope="session")
def golden_model() -> Callable[[str], nn.Module]:
    """golden_model(set_name) -> the set's network in eval mode with its weights (strict load).

    Built once per set and session; callers must not modify it.
    """
    cache: dict[str, nn.Module] = {}

    def get(set_name: str) -> nn.Module:
        if set_name not in cache:
            meta = load_meta(set_name)
            net = build_model(unet_config_from_meta(meta, golden_image_size(set_name)))
            net.load_state_dict(load_weights(set_name), strict=True)
            cache[set_name] = net.eval()
        return cache[set_name]

    return get


@pytest.fixture
def record_max_error(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    """record_max_error(label, err): collected and printed in the terminal summary."""
    errors = request.config.stash.setdefault(ERRORS_KEY, [])

    def record(label: str, err: float) -> None:
        errors.append((label, err))

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    errors = config.stash.get(ERRORS_KEY, [])
    if errors:
        terminalreporter.section("golden parity: max abs error")
        for label, err in errors:
            terminalreporter.write_line(f"{label:<48} {err:.3e}")
