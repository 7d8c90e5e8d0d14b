"""What a gateway knows of a model without loading it: ModelInfo from its folder's model.json and
tradeoff.json (both backends use it; on Triton the weights stay on the workers), and the request checks
the engine would make on submit."""

from __future__ import annotations

from pathlib import Path

from service.backends.base import BackendStartupError, GenerationSpec, ModelInfo
from service.engine.errors import InvalidRequest
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
    )


def check_spec(info: ModelInfo, spec: GenerationSpec) -> None:
    """What the engine would refuse synchronously, refused here too (the API checks most of it first)."""
    if not 1 <= spec.steps <= info.num_timesteps:
        raise InvalidRequest(f"steps must be between 1 and T={info.num_timesteps}, got {spec.steps}")
    if (spec.class_label is None) != (info.num_classes is None):
        raise InvalidRequest(f"class_label does not fit model {info.name!r}")
    if info.num_classes is not None and spec.class_label is not None and spec.class_label >= info.num_classes:
        raise InvalidRequest(f"class_label must be between 0 and {info.num_classes - 1}")
    if spec.num_images < 1:
        raise InvalidRequest(f"num_images must be >= 1, got {spec.num_images}")
