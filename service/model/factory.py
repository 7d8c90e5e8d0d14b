"""Build the right network class for a UNetConfig."""

from __future__ import annotations

from service.model.classifier import EncoderUNetModel
from service.model.config import UNetConfig
from service.model.unet import UNetModel

DiffusionNet = UNetModel | EncoderUNetModel


def build_model(config: UNetConfig) -> DiffusionNet:
    """kind unet/superres -> UNetModel, kind classifier -> EncoderUNetModel (float32, train mode)."""
    if config.kind == "classifier":
        return EncoderUNetModel(config)
    return UNetModel(config)
