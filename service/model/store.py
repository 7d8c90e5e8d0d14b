"""Model folders (model_store/NAME/): build them from presets and checkpoints, load them for serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.diffusion.sampling import Denoiser
from service.model.checkpoint import (
    check_state_dict,
    expected_shapes,
    load_into,
    read_safetensors,
    read_torch_checkpoint,
    write_safetensors,
)
from service.model.denoiser import EpsVDenoiser
from service.model.factory import build_model
from service.model.gamma_table import GammaTable, GammaTableError, read_gamma
from service.model.manifest import WEIGHTS_FILE, ModelManifest, read_manifest, write_manifest
from service.model.presets import Preset


class ModelStoreError(ValueError):
    """A model folder that cannot be created or used."""


@dataclass
class LoadedModel:
    manifest: ModelManifest
    net: nn.Module
    denoiser: Denoiser  # EpsVDenoiser when loaded; quality checks may swap in a wrapper
    path: Path
    gamma: GammaTable | None = None  # gamma.json: what variance=analytic needs

    @property
    def gamma_per_step(self) -> np.ndarray | None:
        return None if self.gamma is None else self.gamma.per_step()

    @property
    def name(self) -> str:
        return self.manifest.name


def manifest_from_preset(
    preset: Preset, name: str | None = None, class_names: tuple[str, ...] = ()
) -> ModelManifest:
    if preset.diffusion is None or preset.unet.kind == "classifier":
        raise ModelStoreError(f"preset {preset.name!r} is a classifier; only diffusion models can be served")
    channels = preset.unet.in_channels // (2 if preset.unet.kind == "superres" else 1)
    source = {"preset": preset.name, "repo": preset.repo}
    if preset.checkpoint:
        source.update(checkpoint=preset.checkpoint, url=preset.url or "")
    return ModelManifest(
        name=name or preset.name,
        architecture=preset.unet,
        diffusion=preset.diffusion,
        image_channels=channels,
        class_names=class_names,
        source=source,
        use_fp16=preset.use_fp16,
    )


def write_model_dir(out_dir: Path, manifest: ModelManifest, state_dict: dict[str, torch.Tensor]) -> Path:
    """Check the weights against the manifest's architecture, then write weights + model.json."""
    with torch.device("meta"):
        net = build_model(manifest.architecture)

    check_state_dict(
        expected_shapes(net), state_dict, where=str(manifest.source.get("checkpoint", "weights"))
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / WEIGHTS_FILE, state_dict, metadata={"model": manifest.name})
    write_manifest(out_dir, manifest)
    return out_dir


def convert_checkpoint(checkpoint: Path, preset: Preset, out_dir: Path, name: str | None = None) -> Path:
    """`ddpm convert`: a released .pt state dict -> model_store folder (safetensors + model.json)."""
    state_dict = read_torch_checkpoint(checkpoint)
    manifest = manifest_from_preset(preset, name)
    manifest.source["checkpoint"] = Path(checkpoint).name
    return write_model_dir(out_dir, manifest, state_dict)


def random_model_dir(preset: Preset, out_dir: Path, seed: int = 0, name: str | None = None) -> Path:
    """A randomly initialised model folder (tests, smoke checks, the start of training)."""
    torch.manual_seed(seed)
    net = build_model(preset.unet)
    return write_model_dir(out_dir, manifest_from_preset(preset, name), net.state_dict())


def load_model(model_dir: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Read model.json, build the network, load and check the weights; returned in eval mode."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelStoreError(f"{model_dir}: no such model folder")
    manifest = read_manifest(model_dir)
    net = build_model(manifest.architecture)
    load_into(net, read_safetensors(model_dir / manifest.weights), where=str(model_dir / manifest.weights))
    net.eval().requires_grad_(False).to(device)
    try:
        gamma = read_gamma(model_dir, manifest.diffusion.num_timesteps)
    except GammaTableError as e:
        raise ModelStoreError(str(e)) from None
    denoiser = eps_v_denoiser(manifest, net)
    return LoadedModel(manifest=manifest, net=net, denoiser=denoiser, path=model_dir, gamma=gamma)


def eps_v_denoiser(manifest: ModelManifest, net: nn.Module) -> EpsVDenoiser:
    """The Denoiser that reads `net`'s output the way `manifest` says (learned sigma, class labels)."""
    return EpsVDenoiser(
        net, learn_sigma=manifest.diffusion.learn_sigma, class_conditional=manifest.num_classes is not None
    )
