"""`python -m loadtest.replay`: the workload options, the report's arithmetic, a real run against a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loadtest import driver, replay
from loadtest.driver import Outcome
from loadtest.replay import WorkloadError, parse_mix, read_trace, write_trace
from loadtest.replay_report import summarize
from loadtest.server import Server, ServerConfig

REPO = Path(__file__).resolve().parents[2]


def test_mix_takes_weights_or_equal_shares() -> None:
    assert parse_mix("10:3, 250:1") == {10: 3.0, 250: 1.0}
    assert parse_mix("10,50") == {10: 1.0, 50: 1.0}


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "empty"), ("ten:1", "not K"), ("0:1", ">= 1"), ("10:-1", "positive"), ("10:1,10:2", "twice")],
)
def test_bad_mix_names_what_to_change(text: str, says: str) -> None:
    with pytest.raises(WorkloadError, match=says):
        parse_mix(text)


def test_trace_round_trips_and_bad_lines_are_named(tmp_path: Path) -> None:
    arrivals = driver.poisson_arrivals(5.0, 4.0, {10: 1.0, 250: 1.0}, seed=3, max_requests=100)
    path = tmp_path / "trace.jsonl"
    write_trace(arrivals, path)
    assert read_trace(path) == arrivals
    path.write_text('{"at_s": 0.5, "steps": 10}\n{"at_s": "soon"}\n')
    with pytest.raises(WorkloadError, match="trace.jsonl:2"):
        read_trace(path)


def _outcome(index: int, steps: int, latency: float, status: int | None = 200, **kw: object) -> Outcome:
    return Outcome(index, steps, 0.0, 0.0, latency, latency, status=status, **kw)  # type: ignore[arg-type]


def test_summary_counts_every_outcome_per_k() -> None:
    outcomes = [_outcome(i, 10, 0.1 * (i + 1)) for i in range(10)]  # 0.1 .. 1.0 s
    outcomes += [_outcome(10, 250, 4.0), _outcome(11, 250, 0.0, 429), _outcome(12, 250, 9.0, 504)]
    outcomes += [
        _outcome(13, 250, 2.0, None, error="ConnectError"),
        _outcome(14, 250, 30.0, None, censored=True),
    ]
    result = summarize("http://x", "test", "now", outcomes)
    k10, k250 = result.rows
    assert (k10.steps, k10.sent, k10.ok) == (10, 10, 10)
    p50 = k10.percentiles[50]
    assert p50 is not None and p50.seconds == pytest.approx(0.5) and not p50.lower_bound
    assert (k250.sent, k250.ok, k250.rejected, k250.timed_out) == (5, 1, 1, 1)
    assert (k250.client_errors, k250.censored) == (1, 1)
    assert result.ok == 11 and result.span_s == pytest.approx(30.0)
    assert result.evals_per_s == pytest.approx((10 * 10 + 250) / 30.0)
    text = result.markdown("plot.png")
    assert "| 250 | 5 | 1 | 1 | 1 | 0 | 1 | 1 |" in text and "![latency vs K](plot.png)" in text


def test_unreachable_base_url_is_a_cli_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.replay", "--base-url", "http://127.0.0.1:9", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "no answer from /healthz" in run.stderr
    assert not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_replay_against_a_real_server_writes_the_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, again = tmp_path / "report", tmp_path / "again"
    with Server(ServerConfig(tiny_model_dir, max_batch=4, warmup_iterations=1, compile=False)) as server:
        replay.main(
            ["--base-url", server.base_url, "--mix", "2:2,20:1,5000:1", "--rate", "6", "--duration", "2"]
            + ["--seed", "1", "--out", str(out)]
        )
        counters = server.metrics()
        # The recorded schedule replays exactly: the same arrivals, so the same requests per K.
        replay.main(["--base-url", server.base_url, "--trace", str(out / "trace.jsonl"), "--out", str(again)])
    data = json.loads((out / "report.json").read_text())
    arrivals = read_trace(out / "trace.jsonl")
    by_k = {row["steps"]: row for row in data["rows"]}
    # K=5000 is past the tiny model's T (1000): the server refuses it (422) and the report says so per K.
    assert by_k[5000]["other_http"] == by_k[5000]["sent"] > 0 and by_k[5000]["ok"] == 0
    assert sum(row["sent"] for row in data["rows"]) == len(arrivals)
    assert data["ok"] == by_k[2]["ok"] + by_k[20]["ok"] == by_k[2]["sent"] + by_k[20]["sent"]
    assert counters.value("ddpm_requests_total", status="ok") == data["ok"]
    assert by_k[2]["percentiles"]["50"]["seconds"] > 0
    with Image.open(out / "latency_vs_k.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    assert "| 20 |" in (out / "report.md").read_text()
    replayed = json.loads((again / "report.json").read_text())
    assert [(r["steps"], r["sent"]) for r in replayed["rows"]] == [
        (r["steps"], r["sent"]) for r in data["rows"]
    ]
    assert read_trace(again / "trace.jsonl") == arrivals
