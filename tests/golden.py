"""Access to the golden vectors and manifests copied from the reference oracle into tests/reference/.

The copy keeps the oracle's layout (see tests/reference/README.md), so the suite runs on a clone
without the shared folder. Every loader returns fresh objects: callers may modify them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from service.diffusion.config import DiffusionConfig
from service.diffusion.process import SpacedProcess
from service.diffusion.schedules import named_betas
from service.model.config import UNetConfig

# Max errors recorded by parity tests, printed in pytest's terminal summary (see tests/parity/conftest.py).
ERRORS_KEY = pytest.StashKey[list[tuple[str, float]]]()

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def golden_dir() -> Path:
    return REFERENCE_DIR / "golden"


def manifests_dir() -> Path:
    return REFERENCE_DIR / "manifests"


def golden_sets() -> list[str]:
    """Names of the golden sets (folders holding meta.json), e.g. "G1_improved"."""
    return sorted(p.parent.name for p in golden_dir().glob("*/meta.json"))


def load_tensors(set_name: str) -> dict[str, Tensor]:
    """Records of one set: keys like "forward_int/out", "main/pmv/10/mean"."""
    return load_file(golden_dir() / set_name / "tensors.safetensors")


def load_weights(set_name: str) -> dict[str, Tensor]:
    """The set's network weights under the reference state-dict keys (float32)."""
    return load_file(golden_dir() / set_name / "weights.safetensors")


def load_meta(set_name: str) -> dict[str, Any]:
    return _read_json(golden_dir() / set_name / "meta.json")


def load_common() -> dict[str, Tensor]:
    """Shared inputs: x_forward, x_t_pmv, x_T, noise_bank, x_start, train_noise, labels4, ..."""
    return load_file(golden_dir() / "common_inputs.safetensors")


def load_common_meta() -> dict[str, Any]:
    return _read_json(golden_dir() / "common_inputs.json")


def load_schedules() -> dict[str, Tensor]:
    """float64 schedule arrays: "cosine_1000/betas", "linear_1000/r25/timestep_map", ..."""
    return load_file(golden_dir() / "schedules.safetensors")


def load_schedules_meta() -> dict[str, Any]:
    return _read_json(golden_dir() / "schedules.json")


def manifest_names() -> list[str]:
    """Checkpoint stems that have a manifest, e.g. "64x64_diffusion" (index.json excluded)."""
    return sorted(p.stem for p in manifests_dir().glob("*.json") if p.stem != "index")


def load_manifest(name: str) -> dict[str, Any]:
    return _read_json(manifests_dir() / f"{name}.json")


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


KIND_BY_CLASS = {"UNetModel": "unet", "SuperResModel": "superres", "EncoderUNetModel": "classifier"}


def unet_config_from_meta(meta: dict[str, Any], image_size: int) -> UNetConfig:
    """UNetConfig of a golden set, from its `model` block (what the constructor built) and the
    `constructor` kwargs / factory `flags` (for switches the model block does not echo)."""
    model = meta["model"]
    given = {**meta.get("flags", {}), **meta.get("constructor", {}).get("kwargs", {})}
    return UNetConfig(
        kind=KIND_BY_CLASS[model["class"]],
        image_size=int(model.get("image_size", image_size)),
        in_channels=model["in_channels"],  # already doubled for SuperResModel
        model_channels=model["model_channels"],
        out_channels=model["out_channels"],
        num_res_blocks=model["num_res_blocks"],
        attention_resolutions=tuple(model["attention_resolutions"]),
        channel_mult=tuple(model["channel_mult"]),
        num_classes=model.get("num_classes"),
        num_heads=model["num_heads"],
        num_head_channels=model.get("num_head_channels", -1),
        num_heads_upsample=model["num_heads_upsample"],
        use_scale_shift_norm=bool(given["use_scale_shift_norm"]),
        resblock_updown=bool(given.get("resblock_updown", False)),
        use_new_attention_order=bool(given.get("use_new_attention_order", False)),
        dropout=float(model["dropout"]),
        conv_resample=bool(model.get("conv_resample", True)),
        pool=model.get("pool", "attention"),
    )


def golden_image_size(set_name: str) -> int:
    """Spatial size of the set's forward input (G sets use the common 32x32 x_forward)."""
    x = load_tensors(set_name).get("forward_int/x")
    return 32 if x is None else int(x.shape[-1])


class NoiseBank:
    """Pre-drawn noise, bank[i] being the i-th draw of every row (the golden vectors' convention)."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank

    def draw(self, rows: list[int], draw_index: list[int], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.bank[i, r] for r, i in zip(rows, draw_index, strict=True)]).to(like)


def base_process(config: DiffusionConfig) -> SpacedProcess:
    """The T-step process with the schedule's own betas (no respacing applied)."""
    return SpacedProcess(
        betas=named_betas(config.noise_schedule, config.num_timesteps),
        timestep_map=np.arange(config.num_timesteps, dtype=np.int64),
        original_num_steps=config.num_timesteps,
        rescale_timesteps=config.rescale_timesteps,
    )
