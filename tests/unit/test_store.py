"""Model folders: manifest validation, checkpoint conversion and clear errors on mismatched weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.model.checkpoint import WeightsError
from service.model.factory import build_model
from service.model.manifest import ManifestError, read_manifest
from service.model.presets import get_preset
from service.model.store import convert_checkpoint, load_model


def _pt_checkpoint(tmp_path: Path, preset: str) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = build_model(get_preset(preset).unet).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    return path, state


def test_convert_round_trips_weights_and_writes_manifest(tmp_path: Path) -> None:
    path, state = _pt_checkpoint(tmp_path, "tiny-test")
    out = convert_checkpoint(path, get_preset("tiny-test"), tmp_path / "model")
    model = load_model(out)
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    manifest = read_manifest(out)
    assert manifest.diffusion.num_timesteps == 1000 and manifest.num_classes == 10
    assert manifest.source["checkpoint"] == "ckpt.pt"


def test_wrong_preset_names_first_mismatching_key(tmp_path: Path) -> None:
    path, _ = _pt_checkpoint(tmp_path, "tiny-test")
    with pytest.raises(WeightsError, match=r"key '.*' has shape|missing key|unexpected key"):
        convert_checkpoint(path, get_preset("fmnist-small"), tmp_path / "model")


def test_shape_mismatch_message_names_key_and_shapes(tmp_path: Path) -> None:
    path, state = _pt_checkpoint(tmp_path, "tiny-test")
    state["time_embed.0.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"'time_embed.0.weight' has shape \[3, 3\]"):
        convert_checkpoint(path, get_preset("tiny-test"), tmp_path / "model")


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        convert_checkpoint(path, get_preset("tiny-test"), tmp_path / "model")


def test_manifest_validation_names_the_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_model_dir / "model.json").read_text())
    data["architecture"]["out_channels"] = 3
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="out_channels"):
        read_manifest(bad)
    data["diffusion"]["noise_schedule"] = "quadratic"
    (bad / "model.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="quadratic"):
        read_manifest(bad)
