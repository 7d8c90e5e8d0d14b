"""The whole sampling/training protocol of G1 (improved) and G2 (guided) against the reference's outputs.

Records: p_mean_variance on respaced processes, full ancestral and DDIM trajectories with the recorded
noise, training-loss terms and bits/dim. Tolerances are the reference README's measured ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import torch

from service.diffusion.bpd import calc_bpd_loop
from service.diffusion.coefficients import coefficient_table, gather
from service.diffusion.config import DiffusionConfig
from service.diffusion.losses import training_losses
from service.diffusion.prediction import p_mean_variance
from service.diffusion.process import spaced_process
from service.diffusion.sampling import sample_rows
from service.model.denoiser import EpsVDenoiser
from service.model.factory import build_model
from tests.golden import (
    ERRORS_KEY,
    NoiseBank,
    golden_image_size,
    load_common,
    load_meta,
    load_tensors,
    load_weights,
    unet_config_from_meta,
)

SETS = ("G1_improved", "G2_guided")
COMMON = load_common()
MAX_ERRORS: dict[str, float] = {}


@cache
def golden_denoiser(set_name: str) -> EpsVDenoiser:
    config = unet_config_from_meta(load_meta(set_name), golden_image_size(set_name))
    net = build_model(config)
    net.load_state_dict(load_weights(set_name), strict=True)
    net.eval()
    return EpsVDenoiser(net, learn_sigma=True, class_conditional=True)


def pieces(kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for set_name in SETS:
        for variant in load_meta(set_name)["variants"].values():
            for piece, info in variant["pieces"].items():
                if f"/{kind}" in piece:
                    out.append((set_name, piece, {**info, "flags": variant["diffusion_flags"]}))
    return out


def _respacing(piece: str) -> str | None:
    tail = piece.rsplit("/", 1)[1]
    return None if tail == "full" else tail


@pytest.fixture(autouse=True, scope="module")
def _report_max_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: the largest error per record kind goes to the terminal summary."""
    yield
    errors = request.config.stash.setdefault(ERRORS_KEY, [])
    errors += [(f"diffusion {kind}", err) for kind, err in sorted(MAX_ERRORS.items())]


def assert_close(kind: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    err = (actual.double() - expected.double()).abs().max().item()
    MAX_ERRORS[kind] = max(MAX_ERRORS.get(kind, 0.0), err)
    if kind in ("losses", "bpd"):  # relative error is the meaningful one for these scalars
        rel = ((actual.double() - expected.double()).abs() / expected.double().abs().clamp(min=1e-30)).max()
        MAX_ERRORS[f"{kind} (relative)"] = max(MAX_ERRORS.get(f"{kind} (relative)", 0.0), rel.item())
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize(("set_name", "piece", "info"), pieces("pmv"), ids=lambda v: str(v)[:40])
@torch.no_grad()
def test_p_mean_variance_of_recorded_model_output(set_name: str, piece: str, info: dict[str, Any]) -> None:
    """The math alone: the reference's own network output through our p_mean_variance."""
    golden = load_tensors(set_name)
    config = DiffusionConfig.from_reference_flags(info["flags"])
    process = spaced_process(config, _respacing(piece))
    assert process.timestep_map.tolist() == info["timestep_map"]
    torch.testing.assert_close(torch.from_numpy(process.betas), golden[f"{piece}/betas"], atol=0, rtol=0)
    c = gather(coefficient_table(process), golden[f"{piece}/t"])
    torch.testing.assert_close(c.model_t, golden[f"{piece}/model_t"].float(), atol=0, rtol=0)
    eps, v = golden[f"{piece}/model_output"].chunk(2, dim=1)
    out = p_mean_variance(eps, v, COMMON["x_t_pmv"], c, config.variance_type, clip_denoised=True)
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert_close(
            "p_mean_variance (recorded output)", getattr(out, name), golden[f"{piece}/{name}"], 1e-6, 1e-6
        )


@pytest.mark.parametrize(("set_name", "piece", "info"), pieces("pmv"), ids=lambda v: str(v)[:40])
@torch.no_grad()
def test_p_mean_variance_through_our_unet(set_name: str, piece: str, info: dict[str, Any]) -> None:
    """Network and math together.

    x0 = sqrt(1/a) x_t - sqrt(1/a - 1) eps multiplies the network's float32 error (about 2e-6, the
    reference's own thread-count noise) by sqrt(1/a - 1), which reaches 157 at the end of the linear
    schedule; the tolerance of x0 and of the mean (which contains x0) is scaled by that factor per row.
    """
    golden = load_tensors(set_name)
    config = DiffusionConfig.from_reference_flags(info["flags"])
    c = gather(coefficient_table(spaced_process(config, _respacing(piece))), golden[f"{piece}/t"])
    eps, v = golden_denoiser(set_name)(COMMON["x_t_pmv"], c.model_t, COMMON["labels4"])
    assert_close("model_output", torch.cat([eps, v], 1), golden[f"{piece}/model_output"], 1e-4, 1e-4)
    out = p_mean_variance(eps, v, COMMON["x_t_pmv"], c, config.variance_type, clip_denoised=True)
    for name in ("variance", "log_variance"):
        assert_close("p_mean_variance", getattr(out, name), golden[f"{piece}/{name}"], 1e-4, 1e-4)
    for name in ("mean", "pred_xstart"):
        amplification = c.sqrt_recipm1_alphas_cumprod.clamp(min=1.0).view(-1, 1, 1, 1)
        error = (getattr(out, name) - golden[f"{piece}/{name}"]).abs() / amplification
        MAX_ERRORS["p_mean_variance (error / amplification)"] = max(
            MAX_ERRORS.get("p_mean_variance (error / amplification)", 0.0), error.max().item()
        )
        assert error.max().item() <= 1e-4


SAMPLING = pieces("sample_p") + pieces("sample_ddim")


@pytest.mark.parametrize(("set_name", "piece", "info"), SAMPLING, ids=lambda v: str(v)[:40])
@torch.no_grad()
def test_full_trajectory_with_recorded_noise(set_name: str, piece: str, info: dict[str, Any]) -> None:
    golden = load_tensors(set_name)
    config = DiffusionConfig.from_reference_flags(info["flags"])
    process = spaced_process(config, _respacing(piece))
    sampler = "ddim" if "/sample_ddim" in piece else "ddpm"
    eta = 1.0 if "eta1" in piece else 0.0
    states: list[torch.Tensor] = []
    sample = sample_rows(
        golden_denoiser(set_name),
        [process] * 4,
        COMMON["x_T"],
        NoiseBank(COMMON["noise_bank"]),
        y=COMMON["labels4"],
        sampler=sampler,
        variance_type=config.variance_type,
        eta=eta,
        on_iteration=lambda i, x: states.append(x.clone()),
    )
    assert len(states) == process.num_timesteps
    assert_close("sample", sample, golden[f"{piece}/sample"], 1e-3, 0)
    if f"{piece}/trajectory_sample" in golden:
        assert_close("trajectory", torch.stack(states), golden[f"{piece}/trajectory_sample"], 1e-3, 1e-4)


@pytest.mark.parametrize(("set_name", "piece", "info"), pieces("losses"), ids=lambda v: str(v)[:40])
@torch.no_grad()
def test_training_loss_terms(set_name: str, piece: str, info: dict[str, Any]) -> None:
    golden = load_tensors(set_name)
    config = DiffusionConfig.from_reference_flags(info["flags"])
    table = coefficient_table(spaced_process(config))
    t = golden[f"{piece}/t"]
    torch.testing.assert_close(gather(table, t).model_t, golden[f"{piece}/model_t"].float(), atol=0, rtol=0)
    terms = training_losses(
        golden_denoiser(set_name),
        table,
        COMMON["x_start"],
        t,
        COMMON["train_noise"],
        config.loss_type,
        config.variance_type,
        y=COMMON["labels4"],
    )
    for name, value in terms.items():
        assert_close("losses", value, golden[f"{piece}/{name}"], 0, 1e-4)
    assert set(terms) == {k.rsplit("/", 1)[1] for k in golden if k.startswith(piece)} - {
        "t",
        "model_t",
        "x_t",
    }


@pytest.mark.parametrize(("set_name", "piece", "info"), pieces("bpd"), ids=lambda v: str(v)[:40])
@torch.no_grad()
def test_bits_per_dim(set_name: str, piece: str, info: dict[str, Any]) -> None:
    golden = load_tensors(set_name)
    config = DiffusionConfig.from_reference_flags(info["flags"])
    table = coefficient_table(spaced_process(config, _respacing(piece)))
    result = calc_bpd_loop(
        golden_denoiser(set_name),
        table,
        COMMON["bpd_x_start"],
        lambda i: COMMON["bpd_noise_bank"][i],
        config.variance_type,
        y=COMMON["labels2"],
    )
    assert_close("bpd", result.prior_bpd, golden[f"{piece}/prior_bpd"], 1e-8, 1e-4)
    for name in ("total_bpd", "vb", "xstart_mse", "mse"):
        assert_close("bpd", getattr(result, name), golden[f"{piece}/{name}"], 1e-7, 1e-4)
