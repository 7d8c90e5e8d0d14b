"""optimal_head: sampling with the KL-optimal variance weight in place of the network's head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.cli.ddpm import main as ddpm
from service.data.fashion_mnist import DEFAULT_DIR
from service.diffusion.process import spaced_process
from service.model.store import load_model
from service.quality.generate import generate
from service.quality.optimal_head import OptimalHead, frac_curve, with_optimal_head
from service.quality.sampler_kinds import sampler_kind
from service.quality.variance_fit import StepFit

BUNDLED = Path(__file__).resolve().parents[2] / "model_store" / "fmnist-small"
NEEDS_DATA = pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)",
)


def _fit(t: int, frac: float) -> StepFit:
    return StepFit(step=t, timestep=t, head_frac=0.5, optimal_frac=frac)


def test_the_curve_passes_through_the_fits_and_is_flat_beyond_them() -> None:
    curve = frac_curve([_fit(30, 0.2), _fit(10, 0.6), _fit(20, 0.4)], 40)
    assert curve.shape == (40,) and curve.dtype == torch.float32
    assert curve[10].item() == pytest.approx(0.6) and curve[20].item() == pytest.approx(0.4)
    assert curve[15].item() == pytest.approx(0.5) and curve[25].item() == pytest.approx(0.3)
    assert torch.all(curve[:10] == curve[10]) and torch.all(curve[30:] == curve[30])
    assert torch.all(frac_curve([_fit(5, 0.7)], 8) == torch.tensor(0.7))
    with pytest.raises(ValueError, match="at least one"):
        frac_curve([], 8)


def test_the_head_is_looked_up_by_the_training_step_of_each_row() -> None:
    """The bundled model rescales timesteps (model_t = t * 1000 / 4000); rows of one batch differ in t."""
    config = load_model(BUNDLED).manifest.diffusion
    process = spaced_process(config)
    assert process.rescale_timesteps and process.num_timesteps == 4000
    frac = torch.linspace(0, 1, 4000)
    eps_in = torch.randn(3, 1, 4, 4)
    head = OptimalHead(lambda x, t, y: (eps_in, torch.zeros_like(x)), frac, process)
    spaced = spaced_process(config, 10)
    rows = torch.tensor([0, 4, 9])
    model_t = torch.from_numpy(spaced.model_timesteps)[rows]
    eps, v = head(torch.zeros(3, 1, 4, 4), model_t, None)
    assert eps is eps_in
    t = torch.from_numpy(spaced.timestep_map)[rows]
    for row in range(3):
        assert torch.all(v[row] == 2 * frac[t[row]] - 1)


def test_a_head_without_variance_output_is_refused() -> None:
    process = spaced_process(load_model(BUNDLED).manifest.diffusion)
    head = OptimalHead(lambda x, t, y: (x, None), torch.zeros(4000), process)
    with pytest.raises(ValueError, match="no learned variance"):
        head(torch.zeros(1, 1, 2, 2), torch.zeros(1), None)


@pytest.mark.parametrize(("frac", "fixed"), [(0.0, "fixed-small"), (1.0, "fixed-large")])
def test_the_ends_of_the_range_sample_like_the_fixed_variances(frac: float, fixed: str) -> None:
    """Eq. 15 at frac 0 is beta~ (fixed-small) and at frac 1 is beta (fixed-large), so with the same seeds
    the samples agree to float32 rounding of exp(log Sigma)."""
    model = load_model(BUNDLED)
    fitted = with_optimal_head(model, [_fit(0, frac), _fit(3999, frac)])
    ours, labels, _ = generate(fitted, sampler_kind("ddpm"), 5, 4, seed=3)
    theirs, same_labels, _ = generate(model, sampler_kind(fixed), 5, 4, seed=3)
    assert torch.equal(labels, same_labels)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    head, _, _ = generate(model, sampler_kind("ddpm"), 5, 4, seed=3)
    assert not torch.allclose(head, ours, atol=1e-3)  # the network's own head is not at either end


def test_cli_rejects_bad_step_lists_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    code = ddpm(["variance-fit", "--model", str(BUNDLED), "--score-optimal-head", "10,ten"])
    assert code == 2 and "--score-optimal-head takes step counts" in capsys.readouterr().err
    code = ddpm(["variance-fit", "--model", str(BUNDLED), "--score-optimal-head", "10", "--num-samples", "5"])
    assert code == 2 and "--num-samples must be >= 10" in capsys.readouterr().err


@NEEDS_DATA
def test_cli_scores_the_optimal_head_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "head.json"
    args = ["variance-fit", "--model", str(BUNDLED), "--steps", "5", "--num-images", "8", "--rows", "2"]
    args += ["--score-optimal-head", "4", "--num-samples", "10", "--fit-rows", "6", "--out", str(out)]
    args += ["--refit-samples", "1000", "--refit-rounds", "1"]
    assert ddpm(args) == 0
    printed = capsys.readouterr().out
    assert "(6 fitted steps)" in printed and "10 samples, seed 0" in printed
    lines = printed.splitlines()
    rows = [line.split(" | ")[:2] for line in lines if line.startswith(("| KL-", "| refit"))]
    assert rows == [["| KL-optimal", "4"], ["| refit", "4"]]
    record = json.loads(out.read_text())
    assert [f["timestep"] for f in record["fits"]] == sorted(f["timestep"] for f in record["fits"])
    assert len(record["fits"]) == 6 and record["fit_images"] == 8
    assert all(0.0 <= f["optimal_frac"] <= 1.0 for f in record["fits"])
    assert record["refit"]["samples"] == 1000
    assert record["refit"]["loss_after"] < record["refit"]["loss_before"]
    assert [(p["sampler"], p["steps"], p["num_samples"]) for p in record["points"]] == [
        ("ddpm, KL-optimal head", 4, 10),
        ("ddpm, refit head", 4, 10),
    ]
    assert all(p["fid"] > 0 for p in record["points"])
