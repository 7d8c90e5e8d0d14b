"""Normalisation, resampling and residual blocks of the improved/guided-diffusion UNets.

Attribute names (in_layers, emb_layers, out_layers, skip_connection, op, conv) are part of the
checkpoint format: they produce the reference's state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPS = 32  # every released improved/guided-diffusion model (the reference's GroupNorm32)
GROUP_NORM_EPS = 1e-5


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(groups, C, eps=1e-5) evaluated in float32, so fp16 torsos keep fp32 statistics. The
    name is the reference's; `groups` is 32 there, and the architecture's `norm_groups` here."""

    def __init__(self, channels: int, groups: int = GROUPS) -> None:
        super().__init__(groups, channels, eps=GROUP_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class TimestepBlock(nn.Module):
    """A block whose forward also takes the [B, 4C] timestep (+ class) embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands `emb` to the children that need it (ResBlocks)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2, then an optional conv3x3 (key `conv`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        elif out_channels != channels:
            raise ValueError("Upsample without conv cannot change the channel count")
        self.use_conv = use_conv

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """conv3x3 stride 2 pad 1 (key `op`), or 2x2 average pooling when conv_resample is off."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.op: nn.Module
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError("Downsample without conv cannot change the channel count")
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding (paper: "BigGAN-style" when up/down is set).

    With scale-shift norm the embedding projection is split into (scale, shift), in that order, and
    applied after the out GroupNorm; otherwise it is added before that GroupNorm.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        groups: int = GROUPS,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        # Parameter-free resamplers: guided's up/down blocks resample h and the skip input alike.
        self.updown = up or down
        self.h_upd: nn.Module = nn.Identity()
        self.x_upd: nn.Module = nn.Identity()
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            # Resample between SiLU and the conv, so the conv runs at the new resolution.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        # The embedding path stays float32; cast its output to the (possibly fp16) activations.
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def cast_convs(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights and biases of every Conv inside `module` (the reference's convert_to_fp16 rule)."""
    for sub in module.modules():
        if isinstance(sub, CONV_TYPES):
            sub.weight.data = sub.weight.data.to(dtype)
            if sub.bias is not None:
                sub.bias.data = sub.bias.data.to(dtype)
