"""Choosing K from a latency budget or an FID target, and the live figures behind the prediction."""

from __future__ import annotations

import pytest

from service.api.errors import ApiError
from service.api.latency import DEFAULT_MARGIN, MIN_OUTCOMES, OUTCOME_WINDOW, LatencyTracker
from service.api.metrics import StepLabels
from service.api.selection import LatencyPredictor, choose_for_fid, choose_for_latency
from service.backends.base import EngineLoad
from service.quality.tradeoff import TradeoffPoint
from tests.api.helpers import ModelDirs, make_settings, serve


def points(*rows: tuple[int, float, float]) -> list[TradeoffPoint]:
    return [TradeoffPoint("ddpm", k, 64, fid, 0.5, 0.5, None, seconds) for k, fid, seconds in rows]


TABLE = points((10, 40.0, 0.1), (50, 15.0, 0.5), (250, 8.0, 2.5))


def test_fid_target_takes_the_cheapest_k_that_meets_it() -> None:
    assert choose_for_fid(TABLE, 20.0).steps == 50
    assert choose_for_fid(TABLE, 8.0).steps == 250
    with pytest.raises(ApiError) as e:
        choose_for_fid(TABLE, 5.0)
    assert e.value.field == "max_fid" and "FID 8.00 at K=250" in e.value.message


def test_latency_budget_takes_the_largest_k_that_fits() -> None:
    per_step = 0.01

    def predict(p: TradeoffPoint) -> float:
        return 0.2 + p.steps * per_step

    choice = choose_for_latency(TABLE, 0.8, predict)
    assert choice.steps == 50 and choice.predicted_seconds == pytest.approx(0.7)
    assert choose_for_latency(TABLE, 10.0, predict).steps == 250
    with pytest.raises(ApiError) as e:
        choose_for_latency(TABLE, 0.25, predict)
    assert e.value.field == "latency_budget_ms" and "K=10" in e.value.message


def test_prediction_uses_live_step_time_at_the_joined_bucket_and_queue_wait() -> None:
    tracker = LatencyTracker()
    point = TABLE[1]  # K = 50
    idle = EngineLoad("m", "cpu", queue_depth=0, in_flight=0, free_slots=4)
    # No live figure: the table's, with the default margin (no request has finished yet).
    assert LatencyPredictor(tracker, idle, 1).base(50) is None
    assert LatencyPredictor(tracker, idle, 1)(point) == pytest.approx(0.5 * DEFAULT_MARGIN)
    tracker.record_step(1, 0.01)
    tracker.record_step(4, 0.03)
    tracker.record_queue_wait(2.0)
    assert LatencyPredictor(tracker, idle, 1).base(50) == pytest.approx(50 * 0.01)
    assert LatencyPredictor(tracker, idle, 1)(point) == pytest.approx(50 * 0.01 * DEFAULT_MARGIN)
    busy = EngineLoad("m", "cpu", queue_depth=0, in_flight=3, free_slots=1)
    assert LatencyPredictor(tracker, busy, 1).base(50) == pytest.approx(50 * 0.03)  # joins the 4-row bucket
    full = EngineLoad("m", "cpu", queue_depth=2, in_flight=4, free_slots=0)
    assert LatencyPredictor(tracker, full, 1).base(50) == pytest.approx(2.0 + 50 * 0.03)


def test_the_margin_is_learned_from_what_requests_took() -> None:
    """Predictions are scaled by the 95th percentile of actual ÷ predicted over recent requests (at least
    1): an engine whose requests overran by 30 % gets budgets 30 % tighter, one that was exact gets none."""
    tracker = LatencyTracker()
    for _ in range(MIN_OUTCOMES - 1):
        tracker.record_outcome(1.0, 1.3)
    assert tracker.margin() == DEFAULT_MARGIN  # too few to tell
    for _ in range(100):
        tracker.record_outcome(1.0, 1.3)
    assert tracker.margin() == pytest.approx(1.3)
    for _ in range(OUTCOME_WINDOW):
        tracker.record_outcome(2.0, 1.0)  # faster than predicted: no margin below 1
    assert tracker.margin() == 1.0
    for i in range(OUTCOME_WINDOW):
        tracker.record_outcome(1.0, 1.0 + (i % 20) / 10)  # ratios 1.0 .. 2.9, 5 % of them at 2.9
    assert tracker.margin() == pytest.approx(2.8)


def test_tracker_percentiles_and_moving_average() -> None:
    tracker = LatencyTracker(window=100, weight=0.5)
    for i in range(1, 101):
        tracker.record_latency("50", i / 100)
    stats = tracker.percentiles()["50"]
    assert (stats.count, stats.p50, stats.p90, stats.p99) == (100, 0.5, 0.9, 0.99)
    tracker.record_step(2, 1.0)
    tracker.record_step(2, 3.0)
    assert tracker.step_seconds(2) == 2.0
    assert tracker.step_seconds(1) == 2.0  # a smaller batch is not slower


def test_step_time_between_and_beyond_the_measured_batch_sizes() -> None:
    """Eager CPU engines report exact row counts, so a request may join a size not measured yet."""
    tracker = LatencyTracker()
    tracker.record_step(1, 0.010)
    tracker.record_step(4, 0.030)
    assert tracker.step_seconds(4) == pytest.approx(0.030)
    assert tracker.step_seconds(2) == pytest.approx(0.010 + 0.020 / 3)  # linear between 1 and 4
    assert tracker.step_seconds(8) == pytest.approx(0.060)  # beyond: scaled by rows, the slow side
    idle = EngineLoad("m", "cpu", queue_depth=0, in_flight=0, free_slots=16)
    # Four images on an idle engine run as a batch of four, not at the one-row step time.
    assert LatencyPredictor(tracker, idle, 4).base(50) == pytest.approx(50 * 0.030)


def test_k_labels_are_bounded() -> None:
    labels = StepLabels([10, 50, 250, 1000])
    labels.add_exact([37])
    assert [labels(k) for k in (10, 37, 11, 50, 51, 1000, 4000)] == [
        "10", "37", "le_50", "50", "le_250", "1000", "gt_1000",
    ]  # fmt: skip
    assert labels(None) == "none" and labels("ddim50") == "other"


def test_latency_budget_over_http(model_dirs: ModelDirs) -> None:
    # A fresh app has no live step time yet: the prediction falls back to the table's seconds per image
    # (0.05 / 0.10 / 0.20 s for K = 5 / 10 / 20), times the default margin (no request finished yet).
    with serve(make_settings(model_dirs)) as client:
        request = {"class_label": 2, "latency_budget_ms": 150, "response_format": "json"}
        r = client.post("/generate", json=request)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["steps"] == 10 and body["seed_chosen_by_server"]
        assert body["selection"]["mode"] == "latency_budget"
        assert body["selection"]["predicted_latency_ms"] == pytest.approx(100.0 * DEFAULT_MARGIN)
        # Now live: a generous budget affords the largest calibrated K, an absurd one none.
        assert client.post("/generate", json={**request, "latency_budget_ms": 600_000}).json()["steps"] == 20
        r = client.post("/generate", json={**request, "latency_budget_ms": 1.0})
        assert r.status_code == 422 and r.json()["error"]["field"] == "latency_budget_ms"
        assert r.json()["error"]["code"] == "target_unreachable"
        # Below the published minimum (DDPM_MIN_LATENCY_BUDGET_MS, in the schema) it is a plain bad field.
        r = client.post("/generate", json={**request, "latency_budget_ms": 0.5})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
