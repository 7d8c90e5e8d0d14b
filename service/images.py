"""Model space [-1, 1] to 8-bit pixels and PNG files."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8, truncating as the reference scripts do."""
    pixels = ((x.detach().float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def to_pil(image: np.ndarray) -> Image.Image:
    """One [H, W, C] uint8 image (C = 1 or 3)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def png_bytes(image: np.ndarray) -> bytes:
    return _encoded(to_pil(image))


def preview_png(image: np.ndarray, side: int) -> bytes:
    """A PNG at most about `side` pixels a side: the image shrunk by a whole factor, box-averaged (a
    256-pixel x0 becomes 128 pixels); smaller images go as they are."""
    picture = to_pil(image)
    factor = math.ceil(max(picture.size) / side)
    return _encoded(picture.reduce(factor) if factor > 1 else picture)


def _encoded(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile [B, H, W, C] images into one [H', W', C] image, row-major, with black padding."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[top : top + height, left : left + width] = image
    return canvas


def save_png(image: np.ndarray, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, format="PNG")
