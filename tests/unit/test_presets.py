"""Presets against the reference manifests: the same state dict, heads, and diffusion settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from service.model.attention import AttentionBlock, AttentionPool2d
from service.model.config import ConfigError, UNetConfig
from service.model.factory import build_model
from service.model.presets import PRESETS, UnknownPresetError, get_preset
from tests.golden import load_manifest, manifest_names

MANIFESTS = manifest_names()
VAR_TYPE = {"learned_range": "LEARNED_RANGE", "fixed_small": "FIXED_SMALL", "fixed_large": "FIXED_LARGE"}


def build_on_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(get_preset(name).unet)


def attention_summary(net: nn.Module) -> list[tuple[str, int, int, str]]:
    """(module path, channels, real head count, order) for every attention module, in module order."""
    rows = []
    for path, m in net.named_modules():
        if isinstance(m, AttentionBlock):
            rows.append((path, m.channels, m.num_heads, "new" if m.new_order else "legacy"))
        elif isinstance(m, AttentionPool2d):
            rows.append((path, m.qkv_proj.in_channels, m.num_heads, "new"))
    return rows


def test_every_manifest_has_a_preset() -> None:
    assert len(MANIFESTS) == 23
    assert set(MANIFESTS) <= set(PRESETS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_matches_manifest(name: str) -> None:
    manifest = load_manifest(name)
    state = build_on_meta(name).state_dict()
    expected = [(key, tuple(shape)) for key, shape, _ in manifest["state_dict"]]
    assert set(state) == {key for key, _ in expected}
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected  # same order, same shapes
    assert all(v.dtype == torch.float32 for v in state.values())
    assert sum(v.numel() for v in state.values()) == manifest["num_params"]
    assert len(state) == manifest["num_tensors"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_attention_heads_match_manifest(name: str) -> None:
    blocks = load_manifest(name)["resolved_model"]["attention_blocks"]
    expected = [(b["module"], b["channels"], b["num_heads"], b["order"].split()[0]) for b in blocks]
    assert attention_summary(build_on_meta(name)) == expected


@pytest.mark.parametrize("name", [n for n in MANIFESTS if "fp16_converted_keys" in load_manifest(n)])
def test_convert_torso_casts_exactly_the_reference_keys(name: str) -> None:
    net = build_on_meta(name)
    net.convert_torso_to(torch.float16)
    half = [k for k, v in net.state_dict().items() if v.dtype == torch.float16]
    assert half == load_manifest(name)["fp16_converted_keys"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_preset_matches_resolved_model(name: str) -> None:
    manifest, preset = load_manifest(name), get_preset(name)
    resolved, unet = manifest["resolved_model"], preset.unet
    assert (preset.repo, preset.checkpoint, preset.url) == (
        manifest["repo"],
        manifest["checkpoint"],
        manifest["url"],
    )
    assert unet.kind == manifest["kind"]
    for field in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "dropout"):
        assert getattr(unet, field) == resolved[field], field
    assert unet.channel_mult == tuple(resolved["channel_mult"])
    assert sorted(unet.attention_resolutions) == sorted(resolved["attention_resolutions"])
    assert unet.num_classes == resolved.get("num_classes")
    assert 4 * unet.model_channels == resolved["time_embed_dim"]
    assert preset.use_fp16 == ("fp16_converted_keys" in manifest)


@pytest.mark.parametrize("name", MANIFESTS)
def test_preset_matches_resolved_diffusion(name: str) -> None:
    manifest, preset = load_manifest(name), get_preset(name)
    if manifest["kind"] == "classifier":
        assert preset.diffusion is None  # the classifier's diffusion flags are unused defaults
        return
    resolved: dict[str, Any] = manifest["resolved_diffusion"]
    d = preset.diffusion
    assert d is not None
    assert d.num_timesteps == resolved["num_timesteps"]
    assert d.rescale_timesteps == resolved["rescale_timesteps"]
    assert d.loss_type.upper() == resolved["loss_type"]
    assert VAR_TYPE[d.variance_type] == resolved["model_var_type"]
    assert d.noise_schedule == manifest["diffusion_flags"]["noise_schedule"]


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(UnknownPresetError) as info:
        get_preset("imagenet64")
    assert isinstance(info.value, KeyError)
    assert "64x64_diffusion" in str(info.value) and "tiny-test" in str(info.value)


@pytest.mark.parametrize("name", ["fmnist-small", "fmnist-small-g8", "tiny-test"])
def test_own_presets_run(name: str) -> None:
    preset = get_preset(name)
    assert preset.repo == "ddpm-serve" and preset.checkpoint is None and preset.url is None
    unet = preset.unet
    torch.manual_seed(0)
    net = build_model(unet).eval()
    x = torch.randn(2, unet.in_channels, unet.image_size, unet.image_size)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]), y=torch.tensor([0, 9]))
    assert out.shape == (2, unet.out_channels, unet.image_size, unet.image_size)
    assert torch.isfinite(out).all()


def test_torso_dtype_keeps_io_float32_and_stays_close() -> None:
    """bfloat16 torso (CPU stand-in for fp16): head, norms and embeddings stay float32."""
    torch.manual_seed(0)
    net = build_model(get_preset("tiny-test").unet).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = net(x, t, y=y)
        net.convert_torso_to(torch.bfloat16)
        out = net(x, t, y=y)
    assert out.dtype == torch.float32
    assert net.out[2].weight.dtype == torch.float32 and net.time_embed[0].weight.dtype == torch.float32
    assert net.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def group_counts(net: nn.Module) -> set[int]:
    return {m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}


def test_norm_groups_gives_the_small_model_several_channels_a_group_at_the_same_compute() -> None:
    small, grouped = get_preset("fmnist-small").unet, get_preset("fmnist-small-g8").unet
    assert dataclasses.replace(grouped, norm_groups=32) == small  # nothing else differs
    a, b = build_model(small), build_model(grouped)
    assert group_counts(a) == {32} and group_counts(b) == {8}
    # The output block: 32 channels, one a group at 32 groups, four a group at 8 (as 128 / 32 released).
    assert (b.out[0].num_channels, b.out[0].num_groups) == (32, 8)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert a.state_dict().keys() == b.state_dict().keys()


def test_released_presets_keep_32_groups_and_their_manifests_do_not_mention_it() -> None:
    for name in PRESETS:
        unet = get_preset(name).unet
        assert unet.norm_groups == (8 if name == "fmnist-small-g8" else 32), name
        assert ("norm_groups" in unet.to_dict()) == (name == "fmnist-small-g8"), name


def test_norm_groups_must_divide_every_level() -> None:
    small = get_preset("fmnist-small").unet
    with pytest.raises(ConfigError, match="norm_groups must divide"):
        dataclasses.replace(small, norm_groups=5)
    with pytest.raises(ConfigError, match="norm_groups"):
        UNetConfig.from_dict({**small.to_dict(), "norm_groups": 0})
