"""Network forward passes against the reference's golden outputs (tests/reference/README.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from tests.golden import load_common, load_meta, load_tensors

# (golden set, record). Every forward record of the oracle; the list is explicit so a missing
# record fails instead of silently shrinking coverage.
FORWARD_RECORDS = [
    ("G1_improved", "forward_int"),
    ("G1_improved", "forward_scaled"),
    ("G2_guided", "forward_int"),
    ("F1_improved_noscaleshift", "forward_int"),
    ("F1_improved_noscaleshift", "forward_scaled"),
    ("F2_improved_superres", "forward_int"),
    ("F3_guided_legacy_frac", "forward_int"),
    ("F4_guided_classifier", "forward_int"),
]
TOL = 1e-4  # README: forward atol = rtol = 1e-4
# A float64 re-run of the reference differs from the float32 goldens by <= 1.1e-5; anything above
# 5e-5 means a convention is wrong, not rounding.
CONVENTION_BUG = 5e-5


def forward_inputs(set_name: str, record: str) -> tuple[Tensor, dict[str, Tensor]]:
    """(x, model kwargs) of a forward record; G sets use the common x_forward and labels4."""
    tensors, common = load_tensors(set_name), load_common()
    x = tensors.get(f"{record}/x", common["x_forward"])
    kwargs = {"timesteps": tensors[f"{record}/t"]}
    model = load_meta(set_name)["model"]
    if model.get("num_classes") is not None:
        kwargs["y"] = tensors.get(f"{record}/y", common["labels4"][: x.shape[0]])
    if model["class"] == "SuperResModel":
        kwargs["low_res"] = tensors[f"{record}/low_res"]
    return x, kwargs


def test_every_forward_record_is_covered() -> None:
    sets = {s for s, _ in FORWARD_RECORDS}
    found = {(s, r) for s in sets for r in load_meta(s)["records"] if r.startswith("forward")}
    assert found == set(FORWARD_RECORDS)


@pytest.mark.parametrize(("set_name", "record"), FORWARD_RECORDS, ids=["-".join(r) for r in FORWARD_RECORDS])
def test_forward_matches_reference(
    set_name: str,
    record: str,
    golden_model: Callable[[str], nn.Module],
    record_max_error: Callable[[str, float], None],
) -> None:
    net = golden_model(set_name)
    x, kwargs = forward_inputs(set_name, record)
    expected = load_tensors(set_name)[f"{record}/out"]
    with torch.no_grad():
        out = net(x, **kwargs)

    err = (out - expected).abs().max().item()
    record_max_error(f"{set_name}/{record}", err)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=TOL, rtol=TOL)
    assert err < CONVENTION_BUG, f"max abs error {err:.3e} suggests a convention bug"
