"""Sinusoidal timestep embedding shared by every UNet and the noisy classifier."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_PERIOD = 10000


def timestep_embedding(t: Tensor, dim: int, max_period: int = MAX_PERIOD) -> Tensor:
    """[B] timesteps (int or float) -> [B, dim] float32 features, cos half first.

    f_i = exp(-ln(max_period) * i / half); the embedding is [cos(t f), sin(t f)], with a zero column
    appended when dim is odd. The operation order follows the reference so float timesteps such as
    999.75 (rescale_timesteps) round identically.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def time_embed_mlp(model_channels: int, time_embed_dim: int) -> nn.Sequential:
    """Linear(C -> 4C), SiLU, Linear(4C -> 4C); keys time_embed.0 / time_embed.2 as in the reference."""
    return nn.Sequential(
        nn.Linear(model_channels, time_embed_dim),
        nn.SiLU(),
        nn.Linear(time_embed_dim, time_embed_dim),
    )
