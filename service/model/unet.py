"""UNetModel for improved-diffusion and guided-diffusion checkpoints (plain and super-resolution).

One class covers both repos: improved-diffusion is the special case of guided-diffusion with
integer channel multipliers, num_head_channels=-1, no resblock up/down and the legacy qkv order.
Module layout and attribute names reproduce the reference state-dict keys exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.model.attention import AttentionBlock
from service.model.config import ConfigError, UNetConfig
from service.model.embedding import time_embed_mlp, timestep_embedding
from service.model.layers import (
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    cast_convs,
)


def heads_for(config: UNetConfig, channels: int, num_heads: int) -> int:
    """Real head count of an attention block: fixed head width wins over the num_heads flag."""
    if config.num_head_channels == -1:
        return num_heads
    if channels % config.num_head_channels:
        raise ConfigError(f"{channels} channels do not split into heads of {config.num_head_channels}")
    return channels // config.num_head_channels


def attention_block(config: UNetConfig, channels: int, num_heads: int) -> AttentionBlock:
    heads = heads_for(config, channels, num_heads)
    if channels % heads:
        raise ConfigError(f"{channels} attention channels do not split into {heads} heads")
    return AttentionBlock(
        channels, heads, new_order=config.use_new_attention_order, groups=config.norm_groups
    )


def level_channels(config: UNetConfig) -> list[int]:
    """int(mult * C) per level; fractional multipliers (the 512 model's 0.5) truncate like the reference."""
    return [int(m * config.model_channels) for m in config.channel_mult]


def resblock(config: UNetConfig, channels: int, out_channels: int, **updown: bool) -> ResBlock:
    return ResBlock(
        channels,
        4 * config.model_channels,
        config.dropout,
        out_channels=out_channels,
        use_scale_shift_norm=config.use_scale_shift_norm,
        groups=config.norm_groups,
        **updown,
    )


def build_encoder(config: UNetConfig) -> tuple[nn.ModuleList, TimestepEmbedSequential, list[int], int]:
    """(input_blocks, middle_block, skip-stack channels, final downsample factor)."""
    widths = level_channels(config)
    ch = widths[0]
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
    skip_chans, ds = [ch], 1
    for level, width in enumerate(widths):
        for _ in range(config.num_res_blocks):
            layers: list[nn.Module] = [resblock(config, ch, width)]
            ch = width
            if ds in config.attention_resolutions:
                layers.append(attention_block(config, ch, config.num_heads))
            blocks.append(TimestepEmbedSequential(*layers))
            skip_chans.append(ch)
        if level != len(widths) - 1:
            down = resblock(config, ch, ch, down=True) if config.resblock_updown else None
            blocks.append(TimestepEmbedSequential(down or Downsample(ch, config.conv_resample)))
            skip_chans.append(ch)
            ds *= 2
    middle = TimestepEmbedSequential(
        resblock(config, ch, ch), attention_block(config, ch, config.num_heads), resblock(config, ch, ch)
    )
    return blocks, middle, skip_chans, ds


def build_decoder(config: UNetConfig, skip_chans: list[int], ds: int) -> nn.ModuleList:
    """output_blocks: levels in reverse, num_res_blocks+1 blocks each, consuming the skip stack."""
    widths = level_channels(config)
    skip_chans = list(skip_chans)
    ch = widths[-1]
    blocks = nn.ModuleList()
    for level in reversed(range(len(widths))):
        for i in range(config.num_res_blocks + 1):
            layers: list[nn.Module] = [resblock(config, ch + skip_chans.pop(), widths[level])]
            ch = widths[level]
            if ds in config.attention_resolutions:
                layers.append(attention_block(config, ch, config.heads_upsample))
            if level and i == config.num_res_blocks:
                up = resblock(config, ch, ch, up=True) if config.resblock_updown else None
                layers.append(up or Upsample(ch, config.conv_resample))
                ds //= 2
            blocks.append(TimestepEmbedSequential(*layers))
    return blocks


class UNetModel(nn.Module):
    """eps (and v when learn_sigma) prediction network; kind "superres" also takes `low_res`."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.kind not in ("unet", "superres"):
            raise ConfigError(f"UNetModel builds kind unet or superres, not {config.kind!r}")
        self.config = config
        self.torso_dtype = torch.float32
        time_embed_dim = 4 * config.model_channels
        self.time_embed = time_embed_mlp(config.model_channels, time_embed_dim)
        if config.num_classes is not None:
            self.label_emb = nn.Embedding(config.num_classes, time_embed_dim)
        self.input_blocks, self.middle_block, skip_chans, ds = build_encoder(config)
        self.output_blocks = build_decoder(config, skip_chans, ds)
        head_ch = level_channels(config)[0]
        self.out = nn.Sequential(
            GroupNorm32(head_ch, config.norm_groups),
            nn.SiLU(),
            nn.Conv2d(head_ch, config.out_channels, 3, padding=1),
        )

    def convert_torso_to(self, dtype: torch.dtype) -> None:
        """Cast only the torso convs (reference convert_to_fp16); embeddings, norms and head stay fp32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            cast_convs(part, dtype)
        self.torso_dtype = dtype

    def embed(self, timesteps: Tensor, y: Tensor | None, batch: int) -> Tensor:
        """[B, 4C] embedding: time MLP output plus label embedding (added) for class-conditional models."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(f"timesteps must have shape [{batch}], got {list(timesteps.shape)}")
        features = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(features.to(next(self.time_embed.parameters()).dtype))
        if self.config.num_classes is None:
            if y is not None:
                raise ValueError("this model is unconditional; do not pass y")
            return emb
        if y is None or y.shape != (batch,):
            raise ValueError(f"this model is class-conditional; pass y with shape [{batch}]")
        return emb + self.label_emb(y)

    def with_low_res(self, x: Tensor, low_res: Tensor | None) -> Tensor:
        """Super-res input: bilinear (align_corners=False) resize of low_res, concatenated after x."""
        if self.config.kind != "superres":
            if low_res is not None:
                raise ValueError("low_res is only accepted by super-resolution models")
            return x
        if low_res is None:
            raise ValueError("super-resolution models need low_res")
        upsampled = F.interpolate(low_res, size=x.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([x, upsampled], dim=1)

    def forward(
        self, x: Tensor, timesteps: Tensor, y: Tensor | None = None, low_res: Tensor | None = None
    ) -> Tensor:
        emb = self.embed(timesteps, y, x.shape[0])
        h = self.with_low_res(x, low_res).to(self.torso_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            # Concatenation order is [h, skip], h first, as in the reference.
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
