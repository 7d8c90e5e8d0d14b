"""Engine test fixtures. torch is imported lazily: test_scheduler.py runs without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a 2-core machine shared with other work, more threads make the tiny
    model's many small calls several times slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
