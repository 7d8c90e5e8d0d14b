"""Noisy-image classifier of guided-diffusion (EncoderUNetModel with attention pooling)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.model.attention import AttentionPool2d
from service.model.config import ConfigError, UNetConfig
from service.model.embedding import time_embed_mlp, timestep_embedding
from service.model.layers import GroupNorm32, cast_convs
from service.model.unet import build_encoder

# guided-diffusion only released attention-pooled classifiers; the other pool types are not built.
SUPPORTED_POOLS = ("attention",)


class EncoderUNetModel(nn.Module):
    """UNet encoder half + middle block, then GN, SiLU and AttentionPool2d -> logits [B, out_channels].

    The trunk's attention blocks follow config.use_new_attention_order (False for the released
    classifiers); the pool always uses the new qkv order.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.kind != "classifier":
            raise ConfigError(f"EncoderUNetModel builds kind classifier, not {config.kind!r}")
        if config.pool not in SUPPORTED_POOLS:
            raise ConfigError(f"classifier pool {config.pool!r} is not supported (only {SUPPORTED_POOLS})")
        if config.num_head_channels == -1:
            raise ConfigError("attention pooling needs num_head_channels (the head width)")
        if config.num_classes is not None:
            raise ConfigError("the classifier takes no class label; num_classes must be null")
        self.config = config
        self.torso_dtype = torch.float32
        self.time_embed = time_embed_mlp(config.model_channels, 4 * config.model_channels)
        self.input_blocks, self.middle_block, _, ds = build_encoder(config)
        ch = int(config.channel_mult[-1] * config.model_channels)
        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            AttentionPool2d(config.image_size // ds, ch, config.num_head_channels, config.out_channels),
        )

    def convert_torso_to(self, dtype: torch.dtype) -> None:
        """Cast only the trunk convs (input_blocks, middle_block); the pooling head stays float32."""
        for part in (self.input_blocks, self.middle_block):
            cast_convs(part, dtype)
        self.torso_dtype = dtype

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {list(timesteps.shape)}")
        features = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(features.to(next(self.time_embed.parameters()).dtype))
        h = x.to(self.torso_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.to(x.dtype))
