"""Schedules and respacing equal the reference's float64 arrays and kept-step tables exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.diffusion.config import DiffusionConfig, LossType
from service.diffusion.process import spaced_process
from service.diffusion.respacing import RespacingError, respaced_timesteps
from tests.golden import base_process, load_schedules, load_schedules_meta

SCHEDULES = load_schedules()
LOG_ARRAYS = {"posterior_log_variance_clipped"}
META = load_schedules_meta()


def _config(base: str) -> DiffusionConfig:
    schedule, steps = base.split("_")
    return DiffusionConfig(schedule, int(steps), True, False, LossType.MSE)  # type: ignore[arg-type]


def _cases() -> list[tuple[str, str | None, str]]:
    cases = []
    for base, info in META["bases"].items():
        cases += [(base, None, name) for name in info["base_arrays"]]
        for respacing in info["respaced_arrays_for"]:
            prefix = f"{base}/r{respacing}/"
            names = [k[len(prefix) :] for k in SCHEDULES if k.startswith(prefix)]
            cases += [(base, respacing, name) for name in names]
    return cases


@pytest.mark.parametrize(("base", "respacing", "array"), _cases())
def test_process_arrays_equal_reference_bit_for_bit(base: str, respacing: str | None, array: str) -> None:
    process = base_process(_config(base)) if respacing is None else spaced_process(_config(base), respacing)
    key = f"{base}/{array}" if respacing is None else f"{base}/r{respacing}/{array}"
    expected = SCHEDULES[key].numpy()
    if array in LOG_ARRAYS:
        # np.log is correctly rounded only to within one ulp, and numpy 1.x and 2.x differ there (the
        # golden file was made with numpy 2.4; the Triton extra pins numpy < 2). Everything else is exact.
        np.testing.assert_array_max_ulp(getattr(process, array), expected, maxulp=1)
    else:
        np.testing.assert_array_equal(getattr(process, array), expected)


def _respacing_cases() -> list[tuple[int, str, object]]:
    return [(int(T), s, kept) for T, table in META["respacings"].items() for s, kept in table.items()]


@pytest.mark.parametrize(("num_timesteps", "respacing", "expected"), _respacing_cases())
def test_respacing_table_matches_reference(num_timesteps: int, respacing: str, expected: object) -> None:
    if isinstance(expected, dict):
        with pytest.raises(RespacingError):
            respaced_timesteps(num_timesteps, respacing)
    else:
        assert respaced_timesteps(num_timesteps, respacing) == expected


def test_respacing_25_uses_half_to_even_rounding() -> None:
    """Naive half-up rounding of i * d would keep different steps for "25" at T=1000."""
    d = 999 / 24
    naive = sorted({int(np.floor(i * d + 0.5)) for i in range(25)})
    assert respaced_timesteps(1000, "25") != naive
    assert respaced_timesteps(1000, "25")[0] == 0 and respaced_timesteps(1000, "25")[-1] == 999


def test_ddim_respacing_never_includes_last_step() -> None:
    assert respaced_timesteps(1000, "ddim10") == list(range(0, 1000, 100))


def test_model_timesteps_are_rescaled_by_original_T() -> None:
    config = DiffusionConfig("cosine", 4000, True, True, LossType.RESCALED_MSE)  # type: ignore[arg-type]
    process = spaced_process(config, "10")
    assert process.model_timesteps.dtype == np.float32
    assert process.model_timesteps[-1] == np.float32(999.75)
    assert torch.equal(torch.from_numpy(process.timestep_map), torch.tensor(respaced_timesteps(4000, "10")))
