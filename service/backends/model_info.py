"""What a gateway knows of a model without loading it: ModelInfo from its folder's model.json,
tradeoff.json and gamma.json. Both backends use it; on Triton the weights stay on the workers."""

from __future__ import annotations

from pathlib import Path

from service.backends.base import BackendStartupError, ModelInfo
from service.model.gamma_table import read_gamma
from service.model.manifest import read_manifest
from service.quality.tradeoff import read_tradeoff


def model_info(model_dir: Path) -> ModelInfo:
    """A model folder's ModelInfo from its manifest and tradeoff.json (the weights are not read)."""
    if not model_dir.is_dir():
        raise BackendStartupError(f"{model_dir}: no such model folder")
    if not (model_dir / "model.json").is_file():
        raise BackendStartupError(f"{model_dir}: no model.json (DDPM_MODEL_DIRS must name model folders)")
    try:
        manifest = read_manifest(model_dir)
        tradeoff = read_tradeoff(model_dir)
        gamma = read_gamma(model_dir, manifest.diffusion.num_timesteps)
    except (ValueError, OSError) as e:
        raise BackendStartupError(f"{model_dir}: {e}") from e
    return ModelInfo(
        name=manifest.name,
        image_size=manifest.image_size,
        image_channels=manifest.image_channels,
        num_classes=manifest.num_classes,
        class_names=tuple(manifest.class_names),
        num_timesteps=manifest.diffusion.num_timesteps,
        learn_sigma=manifest.diffusion.learn_sigma,
        tradeoff=tradeoff,
        manifest=manifest,
        has_gamma=gamma is not None,
    )
