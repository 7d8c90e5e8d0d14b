"""variance_fit: the head's interpolation weight against the KL-optimal one, on known inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.cli.ddpm import main as ddpm
from service.data.fashion_mnist import DEFAULT_DIR
from service.diffusion.process import SpacedProcess, spaced_process
from service.model.manifest import read_manifest
from service.quality.variance_fit import evenly_spaced_steps, variance_fit

BUNDLED = Path(__file__).resolve().parents[2] / "model_store" / "fmnist-small"
HEAD_V = 0.2  # a constant head output: frac = (v + 1) / 2 = 0.6


def _process(k: int = 10) -> SpacedProcess:
    return spaced_process(read_manifest(BUNDLED).diffusion, k)


def _oracle(process: SpacedProcess, x_start: torch.Tensor, eps_error: float = 0.0):  # type: ignore[no-untyped-def]
    """A denoiser that knows x_0: it returns the true noise (plus a constant error) and v = HEAD_V."""
    model_t = torch.from_numpy(process.model_timesteps)

    def denoise(
        x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(torch.nonzero(model_t == t[0])[0])
        a = float(process.alphas_cumprod[k])
        eps = (x_t - math.sqrt(a) * x_start) / math.sqrt(1 - a)
        return eps + eps_error, torch.full_like(x_t, HEAD_V)

    return denoise


def test_a_perfect_mean_wants_the_posterior_variance_fixed_small() -> None:
    process = _process()
    x_start = torch.rand(8, 1, 6, 6) * 1.6 - 0.8
    fits = variance_fit(_oracle(process, x_start), process, x_start, None, torch.Generator().manual_seed(0))
    assert [f.step for f in fits] == list(range(1, 10))
    assert [f.timestep for f in fits] == [int(t) for t in process.timestep_map[1:]]
    for fit in fits:
        assert fit.head_frac == pytest.approx(0.6, abs=1e-6)
        assert fit.optimal_frac == pytest.approx(0.0, abs=1e-4)


def test_a_known_mean_error_gives_the_closed_form_weight() -> None:
    """x_0 = 0 and eps off by delta: x0_pred = -sqrt(1/abar - 1) delta (unclipped at step 1), so the mean is
    off by d = coef1 sqrt(1/abar - 1) delta and Sigma* = beta~ + d^2."""
    process, delta, k = _process(), 0.05, 1
    x_start = torch.zeros(4, 1, 5, 5)
    fits = variance_fit(
        _oracle(process, x_start, delta), process, x_start, None, torch.Generator().manual_seed(1), [k]
    )
    d = process.posterior_mean_coef1[k] * process.sqrt_recipm1_alphas_cumprod[k] * delta
    low, high = process.posterior_log_variance_clipped[k], process.log_betas[k]
    expected = (np.log(process.posterior_variance[k] + d**2) - low) / (high - low)
    assert 0.05 < expected < 0.95  # a case where the weight is informative, not clipped
    assert fits[0].optimal_frac == pytest.approx(expected, rel=1e-4)


def test_larger_mean_errors_want_larger_variances() -> None:
    process = _process()
    x_start = torch.rand(8, 1, 6, 6) * 1.6 - 0.8
    weights = [
        variance_fit(
            _oracle(process, x_start, e), process, x_start, None, torch.Generator().manual_seed(0), [3]
        )[0].optimal_frac
        for e in (0.01, 0.1, 0.3)
    ]
    assert weights == sorted(weights) and weights[0] < weights[-1] <= 1.0


def test_steps_are_checked_and_spread() -> None:
    assert evenly_spaced_steps(50, 5) == [1, 13, 25, 37, 49]
    assert evenly_spaced_steps(5, 12) == [1, 2, 3, 4]
    process = _process()
    x_start = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="outside"):
        variance_fit(_oracle(process, x_start), process, x_start, None, torch.Generator(), [0])


@pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)",
)
def test_cli_reports_the_bundled_models_head(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plot = tmp_path / "fit.png"
    args = [
        "variance-fit",
        "--model",
        str(BUNDLED),
        "--steps",
        "10",
        "--num-images",
        "8",
        "--plot",
        str(plot),
    ]
    assert ddpm(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 9 and "mean |head - optimal|" in out
    with Image.open(plot) as image:
        assert image.format == "PNG"


@pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)",
)
def test_cli_compares_models_on_the_same_images_and_noise(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two --model folders: one table each, one plot. The same model twice must give the same rows, which
    holds only if each model sees the same x_t (its own generator, seeded alike)."""
    plot = tmp_path / "both.png"
    args = ["variance-fit", "--steps", "10", "--num-images", "4", "--plot", str(plot)]
    assert ddpm([*args, "--model", str(BUNDLED), "--model", str(BUNDLED)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 18 and rows[:9] == rows[9:]
    # Two checkpoints alike in name and steps are told apart by their folders.
    assert out.count(f"fmnist-small @ 14,000 steps ({BUNDLED})") == 2
    with Image.open(plot) as image:
        assert image.format == "PNG"


def test_cli_scores_the_optimal_head_of_one_model_only(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["variance-fit", "--model", str(BUNDLED), "--model", str(BUNDLED), "--score-optimal-head", "10"]
    assert ddpm(args) == 2
    assert "single --model" in capsys.readouterr().err


def test_cli_refuses_models_without_packaged_test_images(tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert ddpm(["variance-fit", "--model", str(tiny_model_dir)]) == 2
    assert "Fashion-MNIST" in capsys.readouterr().err
