"""Gamma_t = E ||eps_theta(x_t, t)||^2 / d (service.quality.gamma) and `ddpm gamma`, on random models."""

from __future__ import annotations

import gzip
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli.ddpm import main
from service.data.fashion_mnist import FILES
from service.diffusion.process import spaced_process
from service.model.gamma_table import GAMMA_FILE, read_gamma, write_gamma
from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, random_model_dir
from service.quality.gamma import eps_norm_samples, estimate_gamma, grid_timesteps, standard_errors


def _data(model: LoadedModel, count: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    size, channels = model.manifest.image_size, model.manifest.image_channels
    return torch.rand(count, channels, size, size, generator=g) * 2 - 1, torch.randint(
        0, 10, (count,), generator=g
    )


def test_grid_spans_zero_to_t_minus_one() -> None:
    assert grid_timesteps(1000, 5) == [0, 250, 500, 749, 999]  # 749.25 rounds down
    assert grid_timesteps(4000, 256)[:3] == [0, 16, 31] and grid_timesteps(4000, 256)[-1] == 3999
    assert len(grid_timesteps(4000, 256)) == 256
    assert grid_timesteps(10, 50) == list(range(10))  # more points than steps: every step once
    with pytest.raises(ValueError, match="at least 2"):
        grid_timesteps(1000, 1)


def test_table_shape_and_values(tiny_model: LoadedModel) -> None:
    images, labels = _data(tiny_model)
    table = estimate_gamma(tiny_model, images, labels, grid=9, samples_per_step=3, seed=1, batch_size=7)
    assert table.timesteps == tuple(grid_timesteps(1000, 9)) and len(table.gamma) == 9
    assert (table.num_timesteps, table.samples_per_step, table.seed) == (1000, 3, 1)
    assert table.data == "12 images"
    assert np.all(np.isfinite(table.gamma)) and min(table.gamma) > 0
    assert table.per_step().shape == (1000,)


def test_same_seed_same_table_whatever_the_batches(tiny_model: LoadedModel) -> None:
    images, labels = _data(tiny_model)
    first = estimate_gamma(tiny_model, images, labels, grid=5, samples_per_step=3, seed=7, batch_size=4)
    again = estimate_gamma(tiny_model, images, labels, grid=5, samples_per_step=3, seed=7, batch_size=4)
    assert again == first
    rebatched = estimate_gamma(tiny_model, images, labels, grid=5, samples_per_step=3, seed=7, batch_size=15)
    np.testing.assert_allclose(rebatched.gamma, first.gamma, rtol=1e-5)
    other = estimate_gamma(tiny_model, images, labels, grid=5, samples_per_step=3, seed=8, batch_size=4)
    assert not np.allclose(other.gamma, first.gamma)
    # A step's draws do not depend on the other steps of the grid.
    ends = eps_norm_samples(tiny_model, images, labels, [0, 999], 3, seed=7, batch_size=4)
    np.testing.assert_allclose(ends.mean(axis=1), [first.gamma[0], first.gamma[-1]], rtol=1e-5)


def test_x_t_and_the_network_timestep_follow_the_process(tiny_model: LoadedModel) -> None:
    """With eps_theta(x_t) = x_t and x0 = c everywhere, Gamma_t = alpha_bar c^2 + (1 - alpha_bar) chi2/d; the
    network sees t * 1000 / T when the model rescales timesteps."""
    diffusion = replace(tiny_model.manifest.diffusion, rescale_timesteps=True, num_timesteps=500)
    seen: list[torch.Tensor] = []

    def identity(
        x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, None]:
        assert y is not None and len(y) == len(x_t)
        seen.append(model_t)
        return x_t, None

    model = replace(tiny_model, manifest=replace(tiny_model.manifest, diffusion=diffusion), denoiser=identity)
    images = torch.full((4, 3, 16, 16), 0.5)
    steps = [0, 100, 250, 499]
    norms = eps_norm_samples(model, images, torch.zeros(4), steps, 64, seed=0, batch_size=50)
    alpha_bar = spaced_process(diffusion).alphas_cumprod[steps]
    expected = alpha_bar * 0.25 + (1 - alpha_bar)
    # Per draw, the noise term (1 - alpha_bar) chi2/d has variance (1 - alpha_bar)^2 2/d and the cross term
    # 2 sqrt(alpha_bar (1 - alpha_bar)) c mean(noise) has alpha_bar (1 - alpha_bar) / d; d = 768, 64 draws.
    spread = np.sqrt(((1 - alpha_bar) ** 2 * 2 + alpha_bar * (1 - alpha_bar)) / 768 / 64)
    assert np.all(np.abs(norms.mean(axis=1) - expected) <= 5 * spread + 1e-6), (norms.mean(axis=1), expected)
    assert set(torch.cat(seen).tolist()) == {t * 2.0 for t in steps}
    assert standard_errors(norms).shape == (4,)


def test_bad_inputs(tiny_model: LoadedModel) -> None:
    images, labels = _data(tiny_model)
    with pytest.raises(ValueError, match="one label per image"):
        estimate_gamma(tiny_model, images, None, grid=3, samples_per_step=2)
    with pytest.raises(ValueError, match="shape"):
        estimate_gamma(tiny_model, images[:, :1], labels, grid=3, samples_per_step=2)
    with pytest.raises(ValueError, match="in 0..999"):
        eps_norm_samples(tiny_model, images, labels, [1000], 2)


def test_table_round_trips_and_load_model_reads_it(tiny_model: LoadedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model.path, tmp_path / "tiny")  # the shared fixture's folder stays as is
    images, labels = _data(tiny_model)
    table = estimate_gamma(tiny_model, images, labels, grid=4, samples_per_step=2, data="random images")
    assert write_gamma(folder, table) == folder / GAMMA_FILE
    assert read_gamma(folder, 1000) == table
    loaded = load_model(folder)
    assert loaded.gamma == table
    per_step = loaded.gamma_per_step
    assert per_step is not None and per_step[table.timesteps[1]] == pytest.approx(table.gamma[1])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fmnist_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random fmnist-small model folder (28x28x1, T = 4000) and a folder of 20 fake training images."""
    root = tmp_path_factory.mktemp("gamma")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    image_file, label_file = FILES["train"]
    _write_idx(data / image_file, rng.integers(0, 256, size=(20, 28, 28)))
    _write_idx(data / label_file, rng.integers(0, 10, size=20))
    return random_model_dir(get_preset("fmnist-small"), root / "model", seed=0), data


def test_cli_writes_gamma_json(fmnist_model: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, data = fmnist_model
    args = ["gamma", "--model", str(model), "--data-dir", str(data), "--grid", "8", "--samples-per-step", "4"]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {model / GAMMA_FILE}" in out and "Gamma from" in out and "took" in out
    table = load_model(model).gamma
    assert table is not None and len(table.timesteps) == 8 and table.timesteps[-1] == 3999
    assert table.samples_per_step == 4 and table.data == "Fashion-MNIST train split (20 images)"
    assert all(g > 0 for g in table.gamma)


def test_cli_errors(
    fmnist_model: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = fmnist_model
    assert main(["gamma", "--model", str(tmp_path / "nowhere"), "--data-dir", str(data)]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert main(["gamma", "--model", str(model), "--data-dir", str(tmp_path)]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["gamma", "--model", str(model), "--data-dir", str(data), "--split", "test"]) == 2
    assert "t10k-images" in capsys.readouterr().err
    assert main(["gamma", "--model", str(tiny_model_dir), "--data-dir", str(data)]) == 2
    assert "28x28x1" in capsys.readouterr().err
    assert main(["gamma", "--model", str(model), "--grid", "1"]) == 2
    assert "--grid must be >= 2" in capsys.readouterr().err
    broken = shutil.copytree(model, tmp_path / "broken")
    (broken / GAMMA_FILE).write_text("{}")
    assert main(["gamma", "--model", str(broken), "--data-dir", str(data)]) == 2
    assert "remove it" in capsys.readouterr().err
