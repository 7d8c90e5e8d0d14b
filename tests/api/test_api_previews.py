"""SSE previews: the predicted x0 as a small PNG every `preview_every` steps, bounded, off by default."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.backends.base import MAX_PREVIEWS
from tests.api.test_api_generate import parse_events


def stream(client: TestClient, body: dict) -> list[tuple[str, dict]]:
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return parse_events(r.read().decode())


def previews(events: list[tuple[str, dict]]) -> list[dict]:
    return [data for kind, data in events if kind == "preview"]


def test_previews_every_n_steps_of_each_image_before_the_result(client: TestClient) -> None:
    events = stream(client, {"class_label": 2, "steps": 7, "num_images": 2, "seed": 4, "preview_every": 3})
    shown = previews(events)
    # Steps 3 and 6 of 7: never after the last step, where the image itself comes in the result.
    assert sorted((p["image"], p["step"]) for p in shown) == [(0, 3), (0, 6), (1, 3), (1, 6)]
    assert all(p["steps"] == 7 for p in shown)
    for p in shown:
        image = Image.open(io.BytesIO(base64.b64decode(p["png"])))
        assert image.format == "PNG" and image.size == (16, 16)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and kinds.index("preview") > kinds.index("progress")


def test_previews_show_x0_sharpening_towards_the_result(client: TestClient) -> None:
    body = {"class_label": 2, "steps": 10, "seed": 9, "preview_every": 1}
    events = stream(client, body)
    final = decode(events[-1][1]["images"][0])
    shown = [decode(p["png"]) for p in previews(events)]
    distance = [float(abs(x - final).mean()) for x in shown]
    # Every step brings the prediction of x0 closer to the image it ends as (on the tiny random model:
    # 124 grey levels apart after the first step, about 3 after the 9th of 10).
    assert all(later < earlier for earlier, later in zip(distance, distance[1:], strict=False))
    assert distance[-1] < distance[0] / 20


def decode(png_base64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))), dtype=np.float64)


def test_previews_are_bounded_per_image(client: TestClient) -> None:
    shown = previews(stream(client, {"class_label": 1, "steps": 60, "seed": 1, "preview_every": 1}))
    # Asked for one per step; raised to every 60 / MAX_PREVIEWS = 6 steps: 6, 12, ..., 54.
    assert [p["step"] for p in shown] == list(range(60 // MAX_PREVIEWS, 60, 60 // MAX_PREVIEWS))


def test_previews_do_not_change_the_images(client: TestClient) -> None:
    body = {"class_label": 6, "steps": 6, "seed": 21, "num_images": 2}
    plain = stream(client, body)[-1][1]["images"]
    previewed = stream(client, {**body, "preview_every": 2})[-1][1]["images"]
    assert previewed == plain


def test_no_previews_unless_asked(client: TestClient) -> None:
    assert previews(stream(client, {"class_label": 1, "steps": 6, "seed": 1})) == []


def test_preview_every_needs_a_stream_and_a_positive_period(client: TestClient) -> None:
    for body, message in (
        ({"class_label": 1, "steps": 6, "preview_every": 2}, "needs stream=true"),
        ({"class_label": 1, "steps": 6, "preview_every": 0, "stream": True}, "greater than or equal to 1"),
    ):
        r = client.post("/generate", json=body)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "preview_every" and message in error["message"], error
