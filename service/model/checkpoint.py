"""Reading and writing weights: the original .pt files, and our safetensors copies.

Released checkpoints are plain state dicts saved by torch.save; they are read with weights_only=True
so a file cannot run code on load. Keys are checked against the architecture before loading, and the
first mismatch is named, because a wrong preset otherwise shows up only as bad images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class WeightsError(ValueError):
    """Weights that cannot be read, or that do not fit the architecture."""


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for corrupt or non-torch files
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for malformed headers
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def write_safetensors(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata)
    # safetensors creates files readable by their owner only; a server under another user must read them.
    Path(path).chmod(0o644)


def check_state_dict(
    expected: Mapping[str, torch.Size], actual: Mapping[str, torch.Tensor], where: str
) -> None:
    """Raise WeightsError naming the first missing, unexpected or mis-shaped key (in expected order)."""
    for key, shape in expected.items():
        if key not in actual:
            raise WeightsError(f"{where}: missing key {key!r} (expected shape {list(shape)})")
        if tuple(actual[key].shape) != tuple(shape):
            raise WeightsError(
                f"{where}: key {key!r} has shape {list(actual[key].shape)}, "
                f"the architecture needs {list(shape)}"
            )
    unexpected = [k for k in actual if k not in expected]
    if unexpected:
        raise WeightsError(f"{where}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")


def expected_shapes(net: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in net.state_dict().items()}


def load_into(net: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    check_state_dict(expected_shapes(net), state_dict, where)
    net.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
