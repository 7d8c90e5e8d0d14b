"""Precision and compilation policy of an executor's network.

fp16 on CUDA converts only the UNet torso (net.convert_torso_to, the reference's convert_to_fp16): the
timestep embedding, normalisation and output head stay float32, and EpsVDenoiser hands float32 (eps, v)
to the diffusion math, so the variance interpolation and x0 prediction run in float32 as in the reference.
On the CPU, fp16 convolutions are slow or missing; bf16 is offered instead.
"""

from __future__ import annotations

import inspect
import logging

import torch

from service.diffusion.sampling import Denoiser
from service.engine.settings import EngineSettings, Precision
from service.model.store import LoadedModel

log = logging.getLogger(__name__)


def torso_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision is Precision.AUTO:
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision is Precision.FP16 and device.type != "cuda":
        raise ValueError("fp16 is for CUDA devices; use bf16 or fp32 on the CPU")
    return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[
        precision
    ]


def compile_enabled(settings: EngineSettings, device: torch.device) -> bool:
    return device.type == "cuda" if settings.compile is None else settings.compile


def prepare_denoiser(
    model: LoadedModel,
    settings: EngineSettings,
    device: torch.device,
    num_buckets: int,
    denoiser: Denoiser | None = None,
) -> Denoiser:
    """The callable the executor runs: the model's torso cast to its precision, compiled if asked.

    Casting mutates `model.net`: a pool loads one model per device, so engines never share a network.
    """
    dtype = torso_dtype(settings.precision, device)
    net = model.net
    if getattr(net, "torso_dtype", torch.float32) != dtype:
        convert = getattr(net, "convert_torso_to", None)
        if convert is None:
            raise ValueError(f"{type(net).__name__} cannot run its torso in {dtype}")
        convert(dtype)
    denoise: Denoiser = denoiser if denoiser is not None else model.denoiser
    if not compile_enabled(settings, device):
        return denoise
    _allow_one_graph_per_bucket(num_buckets)
    # dynamic=False: one graph specialised per bucket shape, so nothing recompiles once every bucket has
    # been warmed up (the rows' t and labels are tensor values, which do not guard). Graph capture is
    # ours (see buckets.py), so a mode with its own CUDA graphs ("reduce-overhead") is not wanted here.
    # A function or bound method is compiled as it is; a callable object through its bound __call__.
    target = denoise if inspect.isfunction(denoise) or inspect.ismethod(denoise) else denoise.__call__
    compiled = torch.compile(
        target, dynamic=False, backend=settings.compile_backend, mode=settings.compile_mode
    )
    log.info("network compiled (backend %s, %d buckets)", settings.compile_backend, num_buckets)
    return compiled


def _allow_one_graph_per_bucket(num_buckets: int) -> None:
    """Dynamo keeps at most `recompile_limit` graphs per function and falls back to eager beyond it;
    each bucket is one graph, so the limit must exceed the number of buckets."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < num_buckets + 2:
        setattr(config, name, num_buckets + 2)
