"""Refit only the variance head's weights to the minimum of L_vlb, with the rest of the network frozen.

This is where training the head under the paper's loss ends up for a given trunk: with stop-gradient on the
mean (section 3.1), the head's output rows of the last convolution receive only the L_vlb gradient, and
L_vlb is convex in them (each per-pixel KL is convex in log Σ, and log Σ is linear in v, which is linear in
those weights). So instead of many noisy Adam steps, the head is solved for directly: the trunk's features
are computed once for a fixed sample of (x_0, t, noise) with t spread evenly over all training steps, and
L-BFGS minimises the mean L_t over that sample. Comparing its samples with the KL-optimal head
(`optimal_head`) separates "the head is under-trained" from "the trunk gives the head too little to use".
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from service.diffusion.coefficients import coefficient_table, gather
from service.diffusion.losses import vb_terms_bpd
from service.diffusion.prediction import q_sample
from service.diffusion.process import spaced_process
from service.model.store import LoadedModel, eps_v_denoiser

CHUNK = 500  # rows per forward pass while caching, and per L_vlb evaluation while fitting


@dataclass(frozen=True)
class RefitResult:
    samples: int  # (x_0, t, noise) triples in the fitted sample
    loss_before: float  # mean L_t over the sample, bits/dim, with the trained head
    loss_after: float  # the same with the refit head


@dataclass
class _Cached:
    t: torch.Tensor  # [N] training steps
    x_start: torch.Tensor
    x_t: torch.Tensor
    eps: torch.Tensor
    features: torch.Tensor  # input of the last convolution


def head_conv(net: nn.Module) -> nn.Conv2d:
    """The last layer of the reference UNet's output stack (norm, SiLU, conv)."""
    conv = net.out[-1]  # type: ignore[index]
    if not isinstance(conv, nn.Conv2d):
        raise ValueError("the network does not end in the reference UNet's output convolution")
    return conv


@torch.no_grad()
def _cache(
    model: LoadedModel,
    table: torch.Tensor,
    x_pool: torch.Tensor,
    y_pool: torch.Tensor | None,
    samples: int,
    generator: torch.Generator,
) -> _Cached:
    # Stratified over [0, T): every step equally often when `samples` is a multiple of T.
    t_all = torch.arange(samples) * table.shape[0] // samples
    picks = torch.randint(0, len(x_pool), (len(t_all),), generator=generator)
    conv = head_conv(model.net)
    captured: dict[str, torch.Tensor] = {}
    hook = conv.register_forward_hook(lambda module, inputs, output: captured.__setitem__("f", inputs[0]))
    channels = model.manifest.image_channels
    parts: dict[str, list[torch.Tensor]] = {"x_start": [], "x_t": [], "eps": [], "features": []}
    try:
        for start in range(0, len(t_all), CHUNK):
            t, rows = t_all[start : start + CHUNK], picks[start : start + CHUNK]
            c = gather(table, t)
            x_start = x_pool[rows]
            x_t = q_sample(x_start, torch.randn(x_start.shape, generator=generator), c)
            out = model.net(x_t, c.model_t, None if y_pool is None else y_pool[rows]).float()
            for name, value in (("x_start", x_start), ("x_t", x_t), ("eps", out[:, :channels])):
                parts[name].append(value)
            parts["features"].append(captured["f"].float())
    finally:
        hook.remove()
    return _Cached(t_all, *(torch.cat(parts[name]) for name in ("x_start", "x_t", "eps", "features")))


def refit_head(
    model: LoadedModel,
    x_pool: torch.Tensor,
    y_pool: torch.Tensor | None,
    samples: int,
    generator: torch.Generator,
    rounds: int = 4,
) -> tuple[LoadedModel, RefitResult]:
    """A copy of `model` whose variance rows of the last convolution minimise L_vlb on the sample.

    x_pool / y_pool: training images ([-1, 1]) and labels to draw x_0 from; samples: (x_0, t, noise) triples.
    """
    if not model.manifest.diffusion.learn_sigma:
        raise ValueError("the model has fixed variances; there is no head to refit")
    if samples < 1 or rounds < 1:
        raise ValueError("samples and rounds must be >= 1")
    table = coefficient_table(spaced_process(model.manifest.diffusion), x_pool.device)
    cached = _cache(model, table, x_pool, y_pool, samples, generator)
    variance_type = model.manifest.diffusion.variance_type
    channels = model.manifest.image_channels
    conv = head_conv(model.net)
    weight = conv.weight[channels:].detach().clone().requires_grad_(True)
    bias = None if conv.bias is None else conv.bias[channels:].detach().clone().requires_grad_(True)
    count = len(cached.t)

    def mean_vlb(backward: bool) -> float:
        total = 0.0
        for start in range(0, count, CHUNK):
            part = slice(start, start + CHUNK)
            v = F.conv2d(cached.features[part], weight, bias, padding=conv.padding)
            vb, _ = vb_terms_bpd(
                cached.eps[part],
                v,
                cached.x_start[part],
                cached.x_t[part],
                gather(table, cached.t[part]),
                variance_type,
                clip_denoised=False,
            )
            loss = vb.sum() / count
            if backward:
                loss.backward()
            total += loss.item()
        return total

    with torch.no_grad():
        before = mean_vlb(backward=False)
    params = [weight] if bias is None else [weight, bias]
    optimiser = torch.optim.LBFGS(params, max_iter=20, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> float:
        optimiser.zero_grad()
        return mean_vlb(backward=True)

    for _ in range(rounds):
        optimiser.step(closure)  # type: ignore[arg-type]
    with torch.no_grad():
        after = mean_vlb(backward=False)
    net = copy.deepcopy(model.net)
    with torch.no_grad():
        head_conv(net).weight[channels:] = weight
        if bias is not None:
            head_conv(net).bias[channels:] = bias  # type: ignore[index]
    refit = dataclasses.replace(model, net=net, denoiser=eps_v_denoiser(model.manifest, net))
    return refit, RefitResult(samples=count, loss_before=before, loss_after=after)
