"""The adaptive-budgets benchmark's bookkeeping (loadtest/adaptive.py) on made-up outcomes: what it reads
from a PNG answer's headers, and how the report counts answers, goodput and quality. No server."""

from __future__ import annotations

import httpx

from loadtest import adaptive
from loadtest.driver import Outcome


def test_what_ran_is_read_from_the_headers() -> None:
    headers = {"X-Steps": "10", "X-Sampler": "ddpm", "X-Variance": "analytic", "X-Calibrated-FID": "3.56"}
    kept = adaptive.keep(httpx.Response(200, headers={**headers, "X-Degraded": "queue"}))
    assert kept == {"steps": 10, "sampler": "analytic", "fid": 3.56, "reason": "queue"}
    plain = adaptive.keep(httpx.Response(200, headers={"X-Steps": "50", "X-Sampler": "dpm++2m"}))
    assert plain == {"steps": 50, "sampler": "dpm++2m", "fid": None, "reason": None}


def _outcome(index: int, asked: int, status: int, used: int | None = None, latency: float = 1.0) -> Outcome:
    detail = None if used is None else {"steps": used, "sampler": "dpm++2m", "fid": 2.0, "reason": "queue"}
    return Outcome(index, asked, 0.0, 0.0, latency, latency, status=status, detail=detail)


def test_the_report_counts_answers_in_time_goodput_and_losses() -> None:
    outcomes = [
        _outcome(0, 100, 200, used=10),
        _outcome(1, 50, 200, used=10, latency=16.0),  # a 200 after the 15 s deadline: not in time
        _outcome(2, 25, 429),
        Outcome(3, 10, 0.0, 0.0, 45.0, 45.0, error="ReadTimeout"),  # lost
    ]
    run = adaptive.ModeResult(adaptive.ADAPTIVE, outcomes, 40.0, 0.0, 60.0, 0.04, 12.0)
    assert run.in_time == 1 and run.lost == 1 and run.goodput == 0.5 and run.mean("fid") == 2.0
    result = adaptive.AdaptiveResult(10.0, 5.0, "given", 60.0, (run, run), (0.0, 0.0))
    assert not result.met
    text = result.markdown()
    assert "NOT met" in text and "1 lost of 4" in text and "queue 2" in text
