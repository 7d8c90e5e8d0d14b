"""GenerationSpec: the one validation every way in goes through, its rows, and the collation of results."""

from __future__ import annotations

import pytest

from service.diffusion.config import VarianceType
from service.engine.errors import Cancelled, DeadlineExceeded, InvalidRequest
from service.engine.generation import MAX_SEED, Collation, GenerationResult, GenerationSpec
from service.engine.request import RowResult, RowStatus
from service.model.store import LoadedModel

OK = {"model": "tiny-test", "class_label": 3, "steps": 10}


def spec(**fields: object) -> GenerationSpec:
    return GenerationSpec(**{**OK, **fields})  # type: ignore[arg-type]


def test_a_valid_spec_gives_its_k(tiny_model: LoadedModel) -> None:
    manifest = tiny_model.manifest
    assert spec().validate(manifest) == 10
    assert spec(steps="ddim25", sampler="ddim", eta=0.0).validate(manifest) == 25
    assert spec(steps="10,5").validate(manifest) == 15  # section counts
    assert spec(variance=VarianceType.FIXED_LARGE, num_images=3).validate(manifest) == 10


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"model": "other"}, "model", "no model named 'other'"),
        ({"class_label": None}, "class_label", "class-conditional: give class_label (0..9)"),
        ({"class_label": 10}, "class_label", "between 0 and 9, got 10"),
        ({"class_label": -1}, "class_label", "between 0 and 9"),
        ({"steps": 0}, "steps", "between 1 and T=1000"),
        ({"steps": 1001}, "steps", "between 1 and T=1000"),
        ({"steps": True}, "steps", "an integer K or a respacing string"),
        ({"steps": " "}, "steps", "must not be empty"),
        ({"steps": "ddim7x"}, "steps", "steps:"),
        ({"num_images": 0}, "num_images", ">= 1"),
        ({"seed": -1}, "seed", f"between 0 and {MAX_SEED}"),
        ({"sampler": "euler"}, "sampler", "one of ddpm, ddim"),
        ({"eta": 0.0}, "eta", "applies to sampler 'ddim' only"),
        ({"sampler": "ddim", "eta": 1.5}, "eta", "between 0 and 1"),
        ({"variance": "wide"}, "variance", "learned_range, fixed_small, fixed_large"),
        ({"timeout_seconds": 0.0}, "timeout_ms", "positive"),
    ],
)
def test_each_bad_field_is_named(
    tiny_model: LoadedModel, fields: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        spec(**fields).validate(tiny_model.manifest)
    assert info.value.field == field and words in str(info.value)


def test_rows_share_a_group_and_carry_the_deadline() -> None:
    rows = spec(num_images=3, seed=9, sampler="ddim", eta=0.5, timeout_seconds=2.0).rows("g", arrival=100.0)
    assert [r.request_id for r in rows] == ["g/0", "g/1", "g/2"]
    assert [r.image_index for r in rows] == [0, 1, 2]
    assert {(r.seed, r.sampler, r.eta, r.deadline, r.arrival) for r in rows} == {
        (9, "ddim", 0.5, 102.0, 100.0)
    }
    (row,) = spec().rows("h")
    assert row.deadline is None and row.eta == 0.0 and row.variance is None


def result(request_spec: GenerationSpec, index: int, error: Exception | None = None) -> RowResult:
    (request,) = [r for r in request_spec.rows("g") if r.image_index == index]
    status = RowStatus.FINISHED if error is None else RowStatus.for_error(error)  # type: ignore[arg-type]
    image = None if error else _image(index)
    return RowResult(request, status, image, error, 10, 0.1 * index, 1.0 + index)  # type: ignore[arg-type]


def _image(index: int):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.full((2, 2, 1), index, np.uint8)


def test_collation_orders_images_and_takes_the_longest_times() -> None:
    three = spec(num_images=3)
    collation = Collation(three)
    assert collation.add(result(three, 2)) is None and collation.add(result(three, 0)) is None
    answer = collation.add(result(three, 1))
    assert isinstance(answer, GenerationResult)
    assert [int(image[0, 0, 0]) for image in answer.images] == [0, 1, 2]
    assert (answer.steps, answer.queue_seconds, answer.total_seconds) == (10, pytest.approx(0.2), 3.0)


def test_collation_reports_the_cause_not_the_cancels_it_led_to() -> None:
    three = spec(num_images=3)
    collation = Collation(three)
    collation.add(result(three, 0, Cancelled("cancelled because a sibling failed")))
    assert collation.failed  # the caller cancels the other rows now
    collation.add(result(three, 1, DeadlineExceeded("too late")))
    answer = collation.add(result(three, 2))
    assert isinstance(answer, DeadlineExceeded)
