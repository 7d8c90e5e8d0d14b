"""The Fashion-MNIST idx loader: missing and malformed files give typed errors, valid files round-trip."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from service.data.fashion_mnist import (
    DEFAULT_DIR,
    FILES,
    DatasetFormatError,
    DatasetMissingError,
    load_split,
    to_model_space,
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_missing_folder_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="dataset-fashion-mnist"):
        load_split("train", path=tmp_path / "nowhere")


def test_malformed_idx_file_is_a_format_error(tmp_path: Path) -> None:
    image_file, label_file = FILES["test"]
    with gzip.open(tmp_path / image_file, "wb") as f:
        f.write(b"\x12\x34\x56\x78 not an idx file")
    _write_idx(tmp_path / label_file, np.zeros(3))
    with pytest.raises(DatasetFormatError, match=image_file):
        load_split("test", path=tmp_path)


def test_truncated_body_is_a_format_error(tmp_path: Path) -> None:
    image_file, label_file = FILES["test"]
    header = struct.pack(">HBB3I", 0, 0x08, 3, 3, 28, 28)
    with gzip.open(tmp_path / image_file, "wb") as f:
        f.write(header + bytes(100))  # 3 x 28 x 28 promised, 100 bytes given
    _write_idx(tmp_path / label_file, np.zeros(3))
    with pytest.raises(DatasetFormatError, match="header says"):
        load_split("test", path=tmp_path)


def test_valid_idx_pair_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 4], dtype=np.uint8)
    image_file, label_file = FILES["train"]
    _write_idx(tmp_path / image_file, images)
    _write_idx(tmp_path / label_file, labels)
    loaded_images, loaded_labels = load_split("train", path=tmp_path)
    assert loaded_images.dtype == torch.uint8 and loaded_labels.dtype == torch.int64
    assert torch.equal(loaded_images, torch.from_numpy(images))
    assert loaded_labels.tolist() == [0, 9, 4]
    x = to_model_space(loaded_images)
    assert x.shape == (3, 1, 28, 28) and x.min() >= -1.0 and x.max() <= 1.0


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_test_split() -> None:
    images, labels = load_split("test", path=DEFAULT_DIR)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert sorted(labels.unique().tolist()) == list(range(10))
