"""A small Fashion-MNIST CNN: its logits give class accuracy, its penultimate layer the FID feature space.

Inception-v3 pool3 features, the usual FID space, describe 299x299 RGB photographs; on 28x28 grey clothes
they measure mostly the upsampling. A classifier trained on the data itself is the common substitute for
MNIST-like sets, so numbers computed with it are comparable only with numbers computed with the same
weights: the folder's classifier.json records how they were trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from service.model.checkpoint import WeightsError, check_state_dict, expected_shapes, read_safetensors

WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"
FORMAT = "ddpm-serve/fmnist-classifier@1"
IMAGE_SIZE = 28
NUM_CLASSES = 10


class ClassifierError(ValueError):
    """A classifier folder that is missing, malformed or does not fit the architecture; names the file."""


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    dropout: float = 0.3

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ClassifierConfig:
        unknown = set(data) - {"channels", "feature_dim", "dropout"}
        if unknown:
            raise ClassifierError(f"{where}: unknown architecture field(s) {sorted(unknown)}")
        try:
            config = cls(**{**data, "channels": tuple(int(c) for c in data.get("channels", cls.channels))})
        except (TypeError, ValueError) as e:
            raise ClassifierError(f"{where}: bad architecture ({e})") from None
        if not config.channels or 2 ** len(config.channels) > IMAGE_SIZE:
            raise ClassifierError(f"{where}: {len(config.channels)} conv blocks do not fit 28x28 images")
        return config


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the BatchNorm right after it has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionClassifier(nn.Module):
    """conv-BN-ReLU-pool blocks -> flatten -> linear-BN-ReLU (features) -> dropout -> linear (logits)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        widths = (1, *self.config.channels)
        self.blocks = nn.Sequential(*(_conv_block(a, b) for a, b in pairwise(widths)))
        side = IMAGE_SIZE // 2 ** len(self.config.channels)
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * side * side, self.config.feature_dim, bias=False),
            nn.BatchNorm1d(self.config.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Dropout(self.config.dropout), nn.Linear(self.config.feature_dim, NUM_CLASSES)
        )

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 28, 28] in [-1, 1] -> penultimate activations [N, feature_dim] (the FID feature space)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ClassifierError(f"expected images of shape [N, 1, 28, 28], got {list(x.shape)}")
        return self.embed(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 28, 28] in [-1, 1] -> logits [N, 10]."""
        return self.head(self.features(x))


def save_classifier(out_dir: Path | str, model: FashionClassifier, info: dict[str, Any]) -> Path:
    """Write classifier.safetensors and classifier.json (architecture + whatever `info` records)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Kept in their own dtypes (BatchNorm's step counter is int64), unlike the UNet's float32 copies.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": FORMAT})
    # safetensors 0.8 creates the file 0600 whatever the umask; a server running as another user
    # (a container's non-root user, say) must still be able to read the shipped weights.
    (out_dir / WEIGHTS_FILE).chmod(0o644)
    record = {"format": FORMAT, "architecture": asdict(model.config), **info}
    (out_dir / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def read_info(model_dir: Path | str) -> dict[str, Any]:
    """classifier.json as a dict, checked for its format tag and architecture."""
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        raise ClassifierError(f"{path}: no such file (train one with `ddpm train-classifier --out DIR`)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClassifierError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ClassifierError(f"{path}: not a {FORMAT} file")
    if not isinstance(record.get("architecture"), dict):
        raise ClassifierError(f"{path}: missing the 'architecture' object")
    return record


def load_classifier(model_dir: Path | str, device: torch.device | str = "cpu") -> FashionClassifier:
    """Rebuild the architecture from classifier.json, load and check the weights; eval mode."""
    model_dir = Path(model_dir)
    config = ClassifierConfig.from_dict(read_info(model_dir)["architecture"], str(model_dir / INFO_FILE))
    model = FashionClassifier(config)
    weights = model_dir / WEIGHTS_FILE
    try:
        state_dict = read_safetensors(weights)
        check_state_dict(expected_shapes(model), state_dict, where=str(weights))
    except WeightsError as e:
        raise ClassifierError(str(e)) from None
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()
