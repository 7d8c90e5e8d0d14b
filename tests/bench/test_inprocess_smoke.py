"""bench/'s in-process halves on the tiny-test model, side by side with loadtest's HTTP halves: they run
end to end and their reports render. Nothing here asserts on timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ceiling, engine_step, idle_vs_bare, served_vs_ceiling
from bench.variants import Networks, Variant
from service.engine.settings import Precision
from service.model.store import LoadedModel

# Eager settings only: compiled ones would build packages of the tiny model (a minute each on 2 cores);
# tests/engine/test_background_compile.py covers those.
EAGER = [Variant(1, False, Precision.FP32), Variant(2, False, Precision.FP32)]


def test_ceiling_and_engine_step_on_the_tiny_model(tiny_model: LoadedModel) -> None:
    c = ceiling.measure(tiny_model, batch=2, calls=3, warmup=1)
    assert (c.batch, c.calls, len(c.call_s)) == (2, 3, 3) and c.evals_per_s > 0
    assert set(ceiling.summary(c)) >= {"batch", "evals_per_s_median"}
    step = engine_step.measure(tiny_model, batch=2, rounds=2, per_round=2)
    assert step.samples == 4 and step.cpu_ratio > 0


@pytest.mark.slow
def test_served_vs_ceiling_runs_end_to_end(tiny_model_dir: Path, tiny_model: LoadedModel) -> None:
    result = served_vs_ceiling.run(
        tiny_model_dir,
        tiny_model,
        Networks(tiny_model_dir),
        max_batch=2,
        warmup_s=1.0,
        window_s=2.0,
        ceiling_calls=3,
        search_calls=2,
        compile=False,
        candidates=EAGER,
    )
    # A window this short may end before any image does: the bookkeeping is what is checked.
    assert result.http.tally.sent >= 4 and result.http.server_batches > 0  # 2 x max_batch clients
    assert result.before.calls == result.after.calls == 3 and result.ceiling > 0
    assert {variant for variant, _ in result.searched} == set(EAGER) and result.best in EAGER
    assert "## (a) Ceiling vs served throughput" in result.markdown()


@pytest.mark.slow
def test_idle_vs_bare_alternates_http_and_in_process(tiny_model_dir: Path, tiny_model: LoadedModel) -> None:
    networks = Networks(tiny_model_dir)
    result = idle_vs_bare.run(
        tiny_model_dir, tiny_model, networks, repeats=2, steps=2, compile=False, candidates=EAGER
    )
    assert len(result.http_s) == len(result.server_s) == len(result.bare_s) == 2
    assert result.ratio > 0 and "## (c) Idle single request vs the fastest bare loop" in result.markdown()
