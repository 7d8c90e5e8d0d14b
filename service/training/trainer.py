"""`ddpm train`: the paper's recipe on Fashion-MNIST, with checkpoints, resume and a progress bar.

Each step: draw a batch and t (uniform, or importance-sampled for L_vlb), compute the loss terms with
the per-row diffusion math, take an Adam step and update the EMA copy. Every `checkpoint_every` steps
the full state (weights, EMA, optimiser, sampler history, RNG states) is written, so a resumed run
continues exactly where the stopped one was.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from service.data.fashion_mnist import CLASS_NAMES, load_split, to_model_space
from service.diffusion.coefficients import coefficient_table
from service.diffusion.config import LossType
from service.diffusion.losses import training_losses
from service.diffusion.process import spaced_process
from service.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler
from service.model.factory import build_model
from service.model.manifest import ModelManifest
from service.model.presets import get_preset
from service.model.store import eps_v_denoiser, manifest_from_preset, write_model_dir
from service.training.config import TrainConfig
from service.training.ema import EMA

STATE_FILE = "train_state.pt"


@dataclasses.dataclass
class Run:
    config: TrainConfig
    manifest: ModelManifest
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    sampler: UniformSampler
    generator: torch.Generator
    step: int = 0
    seconds: float = 0.0


def new_run(config: TrainConfig) -> Run:
    preset = get_preset(config.preset)
    manifest = manifest_from_preset(preset, config.name, class_names=CLASS_NAMES)
    loss = LossType.RESCALED_KL if config.objective == "vlb" else LossType.RESCALED_MSE
    manifest = dataclasses.replace(
        manifest, diffusion=dataclasses.replace(manifest.diffusion, loss_type=loss)
    )
    torch.manual_seed(config.seed)
    model = build_model(manifest.architecture)
    num_timesteps = manifest.diffusion.num_timesteps
    sampler = (
        LossSecondMomentSampler(num_timesteps) if config.objective == "vlb" else UniformSampler(num_timesteps)
    )
    return Run(
        config=config,
        manifest=manifest,
        model=model,
        ema=EMA(model, config.ema_decay),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        sampler=sampler,
        generator=torch.Generator().manual_seed(config.seed),
    )


def save_state(run: Run, run_dir: Path) -> None:
    state = {
        "config": run.config.to_dict(),
        "step": run.step,
        "seconds": run.seconds,
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if isinstance(run.sampler, LossSecondMomentSampler):
        state["sampler"] = {k: torch.from_numpy(v) for k, v in run.sampler.state_dict().items()}
    tmp = run_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(run_dir / STATE_FILE)  # atomic: a crash mid-write never corrupts the last checkpoint


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The settings of the run saved in `run_dir`, or None where there is none."""
    if not (run_dir / STATE_FILE).exists():
        return None
    state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    return TrainConfig(**state["config"])


def resume_run(config: TrainConfig, run_dir: Path) -> Run:
    """The saved run, continued with the new step target; other settings must match."""
    state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    saved = TrainConfig(**state["config"])
    # Only settings that do not change the math may differ: the step target and how often to save.
    if dataclasses.replace(saved, steps=config.steps, checkpoint_every=config.checkpoint_every) != config:
        raise ValueError(
            f"{run_dir}: saved settings {saved} differ from {config}; "
            "only --steps and --checkpoint-every may change"
        )
    run = new_run(config)
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if isinstance(run.sampler, LossSecondMomentSampler):
        run.sampler.load_state_dict({k: v.numpy() for k, v in state["sampler"].items()})
    run.step, run.seconds = int(state["step"]), float(state["seconds"])
    return run


def train_step(run: Run, data: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> dict[str, float]:
    config, manifest = run.config, run.manifest
    idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=run.generator)
    x_start, y = data[idx], labels[idx]
    t, weights = run.sampler.sample(config.batch_size, run.generator)
    noise = torch.randn(x_start.shape, generator=run.generator)
    denoise = eps_v_denoiser(manifest, run.model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        terms = training_losses(
            denoise,
            table,
            x_start,
            t,
            noise,
            manifest.diffusion.loss_type,
            manifest.diffusion.variance_type,
            y,
        )
    run.sampler.update(t, terms["loss"])
    loss = (terms["loss"] * weights).mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.ema.update(run.model)
    run.step += 1
    return {name: value.detach().mean().item() for name, value in terms.items()}


def machine_description() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def export_ema(run: Run, out_dir: Path) -> Path:
    """Write the EMA weights as a servable model folder (model.json + model.safetensors)."""
    manifest = dataclasses.replace(
        run.manifest,
        source={
            "trained_by": "ddpm train",
            "preset": run.config.preset,
            "steps": run.step,
            "batch_size": run.config.batch_size,
            "objective": run.config.objective,
            "train_seconds": round(run.seconds, 1),
            "machine": machine_description(),
        },
    )
    return write_model_dir(out_dir, manifest, run.ema.model.state_dict())


def train(
    config: TrainConfig,
    run_dir: Path,
    export_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Run:
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    run = resume_run(config, run_dir) if resume and (run_dir / STATE_FILE).exists() else new_run(config)
    images, labels = load_split("train", config.data_dir)
    data = to_model_space(images)
    table = coefficient_table(spaced_process(run.manifest.diffusion))
    run.model.train()
    bar = tqdm(total=config.steps, initial=run.step, desc="train", file=sys.stderr, disable=not progress)
    with bar:
        while run.step < config.steps:
            started = time.perf_counter()
            terms = train_step(run, data, labels, table)
            run.seconds += time.perf_counter() - started
            bar.update(1)
            if run.step % 10 == 0:
                bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()})
            if on_step is not None:
                on_step(run.step, terms)
            if run.step % config.checkpoint_every == 0 or run.step == config.steps:
                save_state(run, run_dir)
                if export_dir is not None:
                    export_ema(run, export_dir)
    return run
