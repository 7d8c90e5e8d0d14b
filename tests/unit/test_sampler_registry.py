"""The sampler registry: names, one signature, and per-row state carried between steps.

`TWO_STEP` below is a sampler written the way a new one is added: a module-level step function and a
`Sampler` declaring its state; registering it is the one line `SAMPLERS[name] = sampler` (here through
monkeypatch, in the service a line of service/diffusion/samplers/__init__.py). It is a toy multistep
method (DDIM on the mean of this step's and the previous step's x0 prediction), enough to show that rows
of a stateful sampler share batches with other samplers and other K and still equal their solo runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from service.diffusion.coefficients import RowCoefficients
from service.diffusion.noise import RowGenerators, image_seed
from service.diffusion.prediction import p_mean_variance
from service.diffusion.process import spaced_process
from service.diffusion.samplers import (
    SAMPLER_NAMES,
    SAMPLERS,
    RowOptions,
    RowState,
    Sampler,
    StepOutput,
    get_sampler,
)
from service.diffusion.sampling import sample_rows
from service.diffusion.steps import ddim_step
from service.images import to_uint8
from service.model.store import LoadedModel
from tests.engine.conftest import one_torch_thread  # noqa: F401 (a fixture)
from tests.engine.test_executor import make_executor, max_diff, row, run


def two_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor | None,
    c: RowCoefficients,
    noise: torch.Tensor,
    options: RowOptions,
    state: RowState,
) -> StepOutput:
    """DDIM (eta 0) on the mean of this and the previous x0 prediction (the first step uses its own)."""
    out = p_mean_variance(eps, v, x_t, c, options.variance[0], options.clip_denoised)
    has_prev = state["has_prev"]
    x0 = torch.where(has_prev > 0, (out.pred_xstart + state["prev_x0"]) / 2, out.pred_xstart)
    x_prev = ddim_step(x_t, out._replace(pred_xstart=x0), noise, c, 0.0)
    return StepOutput(x_prev, x0, {"prev_x0": out.pred_xstart, "has_prev": torch.ones_like(x_t)})


TWO_STEP = Sampler(
    "two-step", "a toy multistep sampler (tests only)", two_step, state=("prev_x0", "has_prev")
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sampler]:
    monkeypatch.setitem(SAMPLERS, TWO_STEP.name, TWO_STEP)  # the one registry line
    yield TWO_STEP


def test_the_registry_names_every_sampler_once() -> None:
    assert SAMPLER_NAMES == ("ddpm", "ddim") and set(SAMPLERS) == set(SAMPLER_NAMES)
    assert get_sampler("ddim").uses_eta and get_sampler("ddpm").uses_variance
    with pytest.raises(ValueError, match="one of ddpm, ddim"):
        get_sampler("euler")


def _solo(model: LoadedModel, sampler: str, k: int, seed: int, label: int) -> torch.Tensor:
    process = spaced_process(model.manifest.diffusion, k)
    noise = RowGenerators([seed])
    x_T = noise.initial((3, 16, 16))
    y = torch.tensor([label])
    return sample_rows(model.denoiser, [process], x_T, noise, y=y, sampler=sampler)


@torch.no_grad()
def test_a_stateful_sampler_mixes_with_others_in_the_loop(
    tiny_model: LoadedModel, registered: Sampler
) -> None:
    ks, samplers, seeds, labels = [4, 9, 6], ["two-step", "ddpm", "two-step"], [1, 2, 3], [0, 5, 9]
    processes = [spaced_process(tiny_model.manifest.diffusion, k) for k in ks]
    noise = RowGenerators(seeds)
    x_T = noise.initial((3, 16, 16))
    mixed = sample_rows(tiny_model.denoiser, processes, x_T, noise, y=torch.tensor(labels), sampler=samplers)
    for i in range(3):
        solo = _solo(tiny_model, samplers[i], ks[i], seeds[i], labels[i])
        assert max_diff(to_uint8(mixed[i : i + 1])[0], to_uint8(solo)[0]) <= 1, i
    plain = _solo(tiny_model, "ddim", 4, 1, 0)
    assert max_diff(to_uint8(mixed[0:1])[0], to_uint8(plain)[0]) > 1  # the state changed the trajectory


@pytest.mark.usefixtures("one_torch_thread")
@torch.no_grad()
def test_the_engine_keeps_a_rows_state_in_its_slot(tiny_model: LoadedModel, registered: Sampler) -> None:
    executor = make_executor(tiny_model, max_batch=4)
    tables = executor.tables
    rows = [
        row(tiny_model, tables, 6, 2, 21, sampler="two-step"),
        row(tiny_model, tables, 9, 4, 22),
        row(tiny_model, tables, 5, 7, 23, sampler="two-step"),
    ]
    images = run(executor, rows, start={2: 3})  # the third joins mid-way, into a slot used before
    for r, image in zip(rows, images, strict=True):
        q = r.request
        solo = _solo(tiny_model, q.sampler, int(q.steps), image_seed(q.seed, 0), int(q.class_label or 0))
        assert max_diff(image, to_uint8(solo)[0]) <= 1, q
