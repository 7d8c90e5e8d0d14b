"""The soak's per-minute account of the engine's work, from two /metrics snapshots."""

from __future__ import annotations

from loadtest.server import MetricsSnapshot, parse_metrics
from loadtest.soak import Work

COUNTERS = """\
# TYPE ddpm_unet_evaluations_total counter
ddpm_unet_evaluations_total{{model="m",engine="0"}} {rows}
# TYPE ddpm_step_duration_seconds histogram
ddpm_step_duration_seconds_bucket{{model="m",engine="0",le="+Inf"}} {steps}
ddpm_step_duration_seconds_count{{model="m",engine="0"}} {steps}
ddpm_step_duration_seconds_sum{{model="m",engine="0"}} {seconds}
# TYPE ddpm_batch_rows histogram
ddpm_batch_rows_bucket{{model="m",engine="0",le="+Inf"}} {steps}
ddpm_batch_rows_count{{model="m",engine="0"}} {steps}
ddpm_batch_rows_sum{{model="m",engine="0"}} {rows}
"""


def snapshot(rows: float, steps: float, seconds: float) -> MetricsSnapshot:
    return parse_metrics(COUNTERS.format(rows=rows, steps=steps, seconds=seconds))


def test_a_minutes_work_is_the_difference_of_the_counters() -> None:
    work = Work.between(snapshot(100, 20, 1.0), snapshot(500, 70, 9.0))
    assert work is not None
    assert work.ms_per_row == 1000 * 8.0 / 400  # 20 ms per row
    assert work.rows_per_step == 400 / 50


def test_an_idle_minute_has_no_work() -> None:
    assert Work.between(snapshot(100, 20, 1.0), snapshot(100, 20, 1.0)) is None
