"""`ddpm train` on real Fashion-MNIST: the loss goes down, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.data.fashion_mnist import DEFAULT_DIR, load_split, to_model_space
from service.diffusion.coefficients import coefficient_table
from service.diffusion.losses import training_losses
from service.diffusion.process import spaced_process
from service.model.denoiser import EpsVDenoiser
from service.model.manifest import read_manifest
from service.training.config import TrainConfig, TrainConfigError, resolve_bf16
from service.training.trainer import Run, saved_config, train

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)",
)


def held_out_loss(run: Run) -> float:
    """Hybrid loss of the live weights on a fixed batch, fixed t and fixed noise (no sampling noise)."""
    images, labels = load_split("test")
    x_start, y = to_model_space(images[:64]), labels[:64]
    generator = torch.Generator().manual_seed(123)
    t = torch.randint(0, 4000, (64,), generator=generator)
    noise = torch.randn(x_start.shape, generator=generator)
    table = coefficient_table(spaced_process(run.manifest.diffusion))
    denoise = EpsVDenoiser(run.model, learn_sigma=True, class_conditional=True)
    with torch.no_grad():
        terms = training_losses(
            denoise,
            table,
            x_start,
            t,
            noise,
            run.manifest.diffusion.loss_type,
            run.manifest.diffusion.variance_type,
            y,
        )
    return float(terms["loss"].mean())


def test_short_training_run_lowers_the_loss(tmp_path: Path) -> None:
    config = TrainConfig(steps=1, batch_size=32, lr=1e-3, bf16=False, checkpoint_every=100)
    before = held_out_loss(train(config, tmp_path / "a", progress=False))
    config = TrainConfig(steps=60, batch_size=32, lr=1e-3, bf16=False, checkpoint_every=100)
    after = held_out_loss(train(config, tmp_path / "b", export_dir=tmp_path / "model", progress=False))
    assert after < 0.7 * before, (before, after)
    manifest = read_manifest(tmp_path / "model")
    assert manifest.source["steps"] == 60 and manifest.class_names[0] == "T-shirt/top"


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(
        TrainConfig(steps=4, batch_size=8, bf16=False, checkpoint_every=2), tmp_path / "s", progress=False
    )
    train(TrainConfig(steps=2, batch_size=8, bf16=False, checkpoint_every=2), tmp_path / "r", progress=False)
    resumed = train(
        TrainConfig(steps=4, batch_size=8, bf16=False, checkpoint_every=2),
        tmp_path / "r",
        resume=True,
        progress=False,
    )
    assert resumed.step == 4
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_vlb_objective_uses_importance_sampling(tmp_path: Path) -> None:
    run = train(
        TrainConfig(steps=2, batch_size=8, bf16=False, objective="vlb"), tmp_path / "v", progress=False
    )
    assert type(run.sampler).__name__ == "LossSecondMomentSampler"
    assert run.sampler.loss_counts.sum() == 16
    assert str(run.manifest.diffusion.loss_type) == "rescaled_kl"


def test_bad_settings_name_the_option() -> None:
    with pytest.raises(TrainConfigError, match="--batch-size"):
        TrainConfig(batch_size=0)
    with pytest.raises(TrainConfigError, match="--objective"):
        TrainConfig(objective="l2")  # type: ignore[arg-type]


def test_auto_precision_keeps_a_resumed_runs_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.engine.compile as compile_module

    monkeypatch.setattr(compile_module, "native_bf16", lambda: True)
    assert resolve_bf16("auto", None) is True  # a new run on a CPU with native bf16
    monkeypatch.setattr(compile_module, "native_bf16", lambda: False)
    assert resolve_bf16("auto", None) is False  # emulated bf16 is several times slower: fp32
    train(TrainConfig(steps=1, batch_size=8, bf16=False, checkpoint_every=1), tmp_path / "r", progress=False)
    saved = saved_config(tmp_path / "r")
    assert saved is not None and saved.bf16 is False
    monkeypatch.setattr(compile_module, "native_bf16", lambda: True)
    assert resolve_bf16("auto", saved) is False  # resumed on a bf16 machine: the run stays fp32
    assert resolve_bf16("bf16", saved) is True  # explicit wins (and resume_run then names the mismatch)
    assert saved_config(tmp_path / "none") is None
    with pytest.raises(TrainConfigError, match="--precision"):
        resolve_bf16("fp8", None)
