"""head_refit: the variance head's own weights solved to their L_vlb minimum, the rest frozen."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from service.model.store import LoadedModel
from service.quality.head_refit import head_conv, refit_head


def _pool(model: LoadedModel, count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    size, channels = model.manifest.image_size, model.manifest.image_channels
    images = torch.rand(count, channels, size, size, generator=g) * 2 - 1
    return images, torch.randint(0, 10, (count,), generator=g)


def _with_head_bias(model: LoadedModel, value: float) -> LoadedModel:
    """A copy whose variance rows output `value` everywhere (v = value, frac = (value + 1) / 2)."""
    shifted = copy.deepcopy(model)
    conv, channels = head_conv(shifted.net), model.manifest.image_channels
    with torch.no_grad():
        conv.weight[channels:] = 0
        conv.bias[channels:] = value
    return shifted


def _refit(model: LoadedModel):  # type: ignore[no-untyped-def]
    images, labels = _pool(model)
    return refit_head(model, images, labels, samples=1000, generator=torch.Generator().manual_seed(0))


def test_any_start_reaches_the_same_minimum(tiny_model: LoadedModel) -> None:
    """L_vlb is convex in the head's weights, so heads started at frac 1.5 and frac -0.5 meet."""
    high, low = _with_head_bias(tiny_model, 2.0), _with_head_bias(tiny_model, -2.0)
    (_, from_high), (_, from_low) = _refit(high), _refit(low)
    assert from_high.samples == from_low.samples == 1000  # every t of T = 1000 once
    # A random network's mean is far off, so most of the loss is mean error the head cannot remove;
    # the part it can remove is removed, and both starts land on the same value.
    assert from_high.loss_after < from_high.loss_before
    assert from_low.loss_before - from_low.loss_after > 1e-3
    assert from_high.loss_after == pytest.approx(from_low.loss_after, abs=1e-6)


def test_only_the_variance_rows_change(tiny_model: LoadedModel) -> None:
    start = _with_head_bias(tiny_model, 1.0)
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    refit, _ = _refit(start)
    channels = tiny_model.manifest.image_channels
    after = refit.net.state_dict()
    for name, value in before.items():
        assert torch.equal(start.net.state_dict()[name], value), f"{name} of the input model changed"
        if name.startswith("out.2."):
            assert torch.equal(after[name][:channels], value[:channels]), f"eps rows of {name} changed"
            assert not torch.equal(after[name][channels:], value[channels:])
        else:
            assert torch.equal(after[name], value), f"{name} changed"
    x, t = torch.zeros(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    y = torch.tensor([1, 2])
    eps_refit, _ = refit.denoiser(x, t, y)
    eps_start, _ = start.denoiser(x, t, y)
    assert torch.equal(eps_refit, eps_start)


def test_fixed_variance_models_have_no_head(tiny_model: LoadedModel) -> None:
    manifest = tiny_model.manifest
    fixed = replace(manifest, diffusion=replace(manifest.diffusion, learn_sigma=False))
    model = replace(tiny_model, manifest=fixed)
    images, labels = _pool(model)
    with pytest.raises(ValueError, match="no head to refit"):
        refit_head(model, images, labels, samples=1000, generator=torch.Generator())
