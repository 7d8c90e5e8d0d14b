"""model.json: a servable model's architecture, diffusion settings and data description, validated on load.

A manifest replaces the command-line flags users of the original code copy by hand: everything needed
to rebuild the network and its process lives beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.diffusion.config import DiffusionConfig, DiffusionConfigError
from service.model.config import ConfigError, UNetConfig

MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "ddpm-serve/model@1"


class ManifestError(ValueError):
    """model.json is missing, malformed or inconsistent; the message names the file and field."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    architecture: UNetConfig
    diffusion: DiffusionConfig
    image_channels: int
    class_names: tuple[str, ...] = ()
    weights: str = WEIGHTS_FILE
    source: dict[str, Any] = field(default_factory=dict)
    use_fp16: bool = False

    @property
    def image_size(self) -> int:
        return self.architecture.image_size

    @property
    def num_classes(self) -> int | None:
        return self.architecture.num_classes

    def validate(self) -> None:
        arch, diffusion = self.architecture, self.diffusion
        if arch.kind == "classifier":
            raise ManifestError("a servable model must be a diffusion UNet, not a classifier")
        expected_out = self.image_channels * (2 if diffusion.learn_sigma else 1)
        if arch.out_channels != expected_out:
            raise ManifestError(
                f"architecture.out_channels is {arch.out_channels} but {self.image_channels} image channels "
                f"with learn_sigma={diffusion.learn_sigma} need {expected_out}"
            )
        expected_in = self.image_channels * (2 if arch.kind == "superres" else 1)
        if arch.in_channels != expected_in:
            raise ManifestError(f"architecture.in_channels is {arch.in_channels}, expected {expected_in}")
        if self.class_names and len(self.class_names) != arch.num_classes:
            raise ManifestError(
                f"class_names lists {len(self.class_names)} names but num_classes is {arch.num_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "architecture": self.architecture.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "data": {"image_channels": self.image_channels, "class_names": list(self.class_names)},
            "weights": self.weights,
            "use_fp16": self.use_fp16,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_FILE) -> ModelManifest:
        if d.get("format") != FORMAT:
            raise ManifestError(f"{where}: format must be {FORMAT!r}, got {d.get('format')!r}")
        missing = [k for k in ("name", "architecture", "diffusion", "data") if k not in d]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            manifest = cls(
                name=str(d["name"]),
                architecture=UNetConfig.from_dict(d["architecture"]),
                diffusion=DiffusionConfig.from_dict(d["diffusion"]),
                image_channels=int(d["data"]["image_channels"]),
                class_names=tuple(d["data"].get("class_names", ())),
                weights=str(d.get("weights", WEIGHTS_FILE)),
                source=dict(d.get("source", {})),
                use_fp16=bool(d.get("use_fp16", False)),
            )
        except (ConfigError, DiffusionConfigError, KeyError, TypeError) as e:
            raise ManifestError(f"{where}: {e}") from None
        try:
            manifest.validate()
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}") from None
        return manifest


def read_manifest(model_dir: Path) -> ModelManifest:
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: no such file (a model folder needs {MANIFEST_FILE} and its weights)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    return ModelManifest.from_dict(data, where=str(path))


def write_manifest(model_dir: Path, manifest: ModelManifest) -> Path:
    manifest.validate()
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
