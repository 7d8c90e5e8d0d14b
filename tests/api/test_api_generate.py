"""POST /generate end to end on a tiny random model: PNG, JSON, reproducibility, server-sent events."""

from __future__ import annotations

import base64
import io
import json

from fastapi.testclient import TestClient
from PIL import Image


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def parse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream body; comments (keep-alives) are skipped."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_png_is_a_real_image_of_the_model_size(client: TestClient) -> None:
    r = client.post("/generate", json={"class_label": 3, "steps": 4, "seed": 7})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-steps"] == "4" and r.headers["x-seed"] == "7" and r.headers["x-model"] == "tiny"
    assert "total;dur=" in r.headers["server-timing"]
    image = decode_png(r.content)
    assert image.size == (16, 16) and image.mode == "RGB"


def test_json_has_images_k_seed_timings_and_quality(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"class_label": 1, "steps": 5, "num_images": 2, "response_format": "json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == 5 and body["num_images"] == 2 and len(body["images"]) == 2
    assert body["seed_chosen_by_server"] is True and isinstance(body["seed"], int)
    assert all(decode_png(base64.b64decode(b)).size == (16, 16) for b in body["images"])
    timings = body["timings"]
    assert timings["total_ms"] >= timings["compute_ms"] > 0 and timings["queue_ms"] >= 0
    assert body["quality"]["fid"] == 30.0  # K=5 is calibrated in the test's tradeoff.json
    assert body["selection"]["mode"] == "steps"


def test_same_seed_same_bytes_other_seed_other_bytes(client: TestClient) -> None:
    request = {"class_label": 2, "steps": 3, "seed": 1234}
    first = client.post("/generate", json=request)
    second = client.post("/generate", json=request)
    other = client.post("/generate", json={**request, "seed": 1235})
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content
    assert first.content != other.content


def test_several_images_as_png_make_a_grid(client: TestClient) -> None:
    r = client.post("/generate", json={"class_label": 0, "steps": 2, "num_images": 4})
    assert r.status_code == 200, r.text
    width, height = decode_png(r.content).size
    assert width > 2 * 16 and height > 2 * 16  # 2 x 2 tiles with padding


def test_ddim_and_default_k(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"class_label": 4, "sampler": "ddim", "eta": 0.5, "response_format": "json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == 5 and body["selection"]["mode"] == "default"  # settings.default_steps
    assert body["sampler"] == "ddim" and body["eta"] == 0.5


def test_unconditional_label_rules_and_second_model(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"model": "tiny-raw", "class_label": 9, "steps": 2, "response_format": "json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny-raw" and r.json()["quality"] is None


def test_stream_sends_progress_then_result(client: TestClient) -> None:
    request = {"class_label": 5, "steps": 6, "num_images": 2, "seed": 3, "stream": True}
    with client.stream("POST", "/generate", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-steps"] == "6"
        events = parse_events(r.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"}
    progress = [data for kind, data in events if kind == "progress"]
    assert {p["image"] for p in progress} == {0, 1}
    assert all(p["steps"] == 6 and 1 <= p["step"] < 6 for p in progress)
    assert progress[-1]["progress"] > progress[0]["progress"]
    result = events[-1][1]
    assert result["steps"] == 6 and result["seed"] == 3 and len(result["images"]) == 2


def test_stream_result_matches_plain_request(client: TestClient) -> None:
    request = {"class_label": 5, "steps": 3, "seed": 11, "response_format": "json"}
    plain = client.post("/generate", json=request).json()
    with client.stream("POST", "/generate", json={**request, "stream": True}) as r:
        result = parse_events(r.read().decode())[-1][1]
    assert result["images"] == plain["images"]


def test_max_fid_picks_smallest_good_enough_k(client: TestClient) -> None:
    for max_fid, expected in ((25.0, 10), (12.0, 20), (100.0, 5)):
        r = client.post("/generate", json={"class_label": 1, "max_fid": max_fid, "response_format": "json"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["steps"] == expected, max_fid
        selection = body["selection"]
        assert (selection["mode"], selection["sampler_mode"]) == ("max_fid", "frontier")
        assert selection["predicted_latency_ms"] is None and selection["candidates"] == [5, 10, 20]
        assert f"K={expected} is the cheapest calibrated point" in selection["reason"]
        assert body["quality"]["fid"] <= max_fid


def test_max_fid_for_ddim_uses_ddim_points(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"class_label": 1, "max_fid": 30, "sampler": "ddim", "response_format": "json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == 10
