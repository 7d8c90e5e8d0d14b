"""Spatial self-attention (both qkv channel orders) and the classifier's attention pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.model.layers import GROUPS, GroupNorm32


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention over [B*heads, d, L] tensors; returns [B*heads, d, L]."""
    # q and k are each scaled by d^(-1/4) *before* the matmul (instead of the logits by d^(-1/2)
    # after it): this is the reference's guard against fp16 overflow of q.k, and keeping it makes
    # fp16 torsos behave like the released models.
    scale = q.shape[1] ** -0.25
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    # Softmax in float32 even for fp16 activations, as the reference does.
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


def qkv_attention_legacy(qkv: Tensor, num_heads: int) -> Tensor:
    """qkv [B, 3*H*d, L] grouped per head as [q | k | v] (improved-diffusion, guided legacy)."""
    b, width, length = qkv.shape
    d = width // (3 * num_heads)
    q, k, v = qkv.reshape(b * num_heads, 3 * d, length).split(d, dim=1)
    return attend(q, k, v).reshape(b, num_heads * d, length)


def qkv_attention_new(qkv: Tensor, num_heads: int) -> Tensor:
    """qkv [B, 3*H*d, L] laid out as [all q | all k | all v], each split into heads (guided new order)."""
    b, width, length = qkv.shape
    d = width // (3 * num_heads)
    q, k, v = (z.reshape(b * num_heads, d, length) for z in qkv.chunk(3, dim=1))
    return attend(q, k, v).reshape(b, num_heads * d, length)


class AttentionBlock(nn.Module):
    """GN -> qkv (Conv1d k=1) over flattened H*W -> attention -> proj_out -> residual add."""

    def __init__(self, channels: int, num_heads: int, new_order: bool = False, groups: int = GROUPS) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        attention = qkv_attention_new if self.new_order else qkv_attention_legacy
        h = self.proj_out(attention(qkv, self.num_heads))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """Classifier head: attend from a prepended mean token over all positions (new qkv order).

    Keys: positional_embedding [C, HW+1], qkv_proj, c_proj (Conv1d k=1).
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int) -> None:
        super().__init__()
        if embed_dim % num_head_channels:
            raise ValueError(f"attention pool: {embed_dim} channels not divisible by {num_head_channels}")
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels
        self.new_order = True

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(qkv_attention_new(self.qkv_proj(x), self.num_heads))
        return x[:, :, 0]
