"""Preview bounds (service.engine.request) and preview PNGs (service.images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.engine.request import MAX_PREVIEWS, preview_period
from service.images import preview_png


@pytest.mark.parametrize(
    ("every", "steps", "period"),
    [(None, 50, None), (5, 50, 5), (1, 10, 1), (1, 100, 10), (7, 1000, 100), (150, 1000, 150)],
)
def test_the_period_is_as_asked_but_never_more_than_max_previews_an_image(
    every: int | None, steps: int, period: int | None
) -> None:
    assert preview_period(every, steps) == period
    if period is not None:
        assert len(range(period, steps, period)) <= MAX_PREVIEWS


def test_small_images_go_as_they_are_large_ones_shrink_by_a_whole_factor() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(preview_png(small, 128))))
    assert back.shape == (28, 28) and np.array_equal(back, small[..., 0])
    large = np.zeros((256, 256, 3), np.uint8)
    large[:, 128:] = 255  # left half black, right half white: a box filter keeps the edge sharp
    shrunk = np.asarray(Image.open(io.BytesIO(preview_png(large, 128))))
    assert shrunk.shape == (128, 128, 3)
    assert shrunk[:, :64].max() == 0 and shrunk[:, 64:].min() == 255
