"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (idx files, gzip-compressed).

Images come back as uint8 [N, 28, 28] and labels as int64 [N]; `to_model_space` maps them to the
[-1, 1] range the diffusion models use (v / 127.5 - 1, as the reference's data loaders).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_UBYTE = 0x08


class DatasetMissingError(FileNotFoundError):
    """The idx files are not where they should be; the message names the Debian package."""


class DatasetFormatError(ValueError):
    """A file that is not a valid idx file of the expected shape."""


def data_dir(path: Path | str | None = None) -> Path:
    """Explicit path, else $DDPM_FASHION_MNIST_DIR, else the Debian package's folder."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("DDPM_FASHION_MNIST_DIR", DEFAULT_DIR))


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Parse one gzip-compressed idx file of unsigned bytes (magic 0x0000 08 NN, big-endian sizes)."""
    if not path.is_file():
        raise DatasetMissingError(
            f"{path} not found: install the Fashion-MNIST data with `apt-get install dataset-fashion-mnist` "
            f"or point DDPM_FASHION_MNIST_DIR at a folder holding the four idx .gz files"
        )
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: too short to be an idx file")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != IDX_UBYTE or ndim != expected_dims:
        raise DatasetFormatError(f"{path}: not a {expected_dims}-d unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetFormatError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def load_split(
    split: Literal["train", "test"], path: Path | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of one split."""
    folder = data_dir(path)
    image_file, label_file = FILES[split]
    images = read_idx(folder / image_file, 3)
    labels = read_idx(folder / label_file, 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels ({split})")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [-1, 1]."""
    return images.float().div(127.5).sub(1.0).unsqueeze(1)
