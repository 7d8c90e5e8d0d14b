"""Precision and compilation policy of an executor's network.

fp16 on CUDA converts only the UNet torso (net.convert_torso_to, the reference's convert_to_fp16): the
timestep embedding, normalisation and output head stay float32, and EpsVDenoiser hands float32 (eps, v)
to the diffusion math, so the variance interpolation and x0 prediction run in float32 as in the reference.
On the CPU, fp16 convolutions are slow or missing; bf16 is offered instead, and AUTO picks it where the
CPU has native bf16 instructions (AMX or AVX512-BF16): there a compiled bf16 torso runs about twice as
fast as fp32, and its quality on the bundled model (v1) is fp32's within sampling noise (FID 6.40 vs 6.41 at
K=25, 3.63 vs 3.61 at K=50, 500 samples, same seeds: docs/precision.md). Without those instructions
bf16 is emulated and slower, so AUTO stays fp32.

AUTO does not follow a manifest's `use_fp16`, on purpose. That flag records how the reference samples a
checkpoint: guided-diffusion's sampler converts to fp16 when told to, improved-diffusion's never does
(its 270M ImageNet-64 model says use_fp16 false although it was trained with fp16). Honouring it would
serve every improved-diffusion checkpoint, and the bundled model, in fp32 on CUDA, giving up the fp16
speed the GPU path is built for. The fp16 torso here keeps the reference's fp32 islands (GroupNorm
statistics, embeddings, the head, softmax and the attention's pre-scaling guard), and stage 5 of
bench/gpu_check.py compares fp16 + compile + graphs images with fp32 eager ones on the bundled model's
real weights; a model that fails that comparison is served with DDPM_PRECISION=fp32.

When compilation happens: on CUDA at warm-up, before the engine turns ready (the CUDA graphs are captured
from the compiled network, and a GPU compiles quickly). There, a machine without a C compiler (Triton
builds its kernel launchers with one) serves eager + graphs after one warning, and a compile that fails
at warm-up falls back to eager + graphs (buckets.BucketRunner._warm_call) rather than kill the engine. On
the CPU in the background while the engine
already serves eager (background_compile.py, packages.py), because there it takes about a minute per
batch size and, in process, would hold the GIL the engine thread needs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
from pathlib import Path

import torch

from service.diffusion.sampling import Denoiser
from service.engine.settings import EngineSettings, Precision
from service.model.store import LoadedModel

log = logging.getLogger(__name__)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo flags; False where unknown)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def torso_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision is Precision.AUTO:
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32
    if precision is Precision.FP16 and device.type != "cuda":
        raise ValueError("fp16 is for CUDA devices; use bf16 or fp32 on the CPU")
    return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[
        precision
    ]


def resolved_precision(precision: Precision, device: torch.device) -> Precision:
    """AUTO made concrete for `device` (what a compiled package's cache key must name)."""
    dtype = torso_dtype(precision, device)
    names = {torch.float32: Precision.FP32, torch.float16: Precision.FP16, torch.bfloat16: Precision.BF16}
    return names[dtype]


def compile_enabled(settings: EngineSettings, device: torch.device) -> bool:
    return device.type == "cuda" if settings.compile is None else settings.compile


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would call on the CPU ($CXX, else g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX") or "g++")


@functools.cache
def _warn_no_compiler() -> None:
    log.warning(
        "compile is on but no C++ compiler (g++ or $CXX) is installed, which torch.compile needs on the "
        "CPU: serving eager. Install g++ to serve compiled, or set DDPM_COMPILE=false to silence this."
    )


def c_compiler() -> str | None:
    """The C compiler Triton would build its CUDA kernel launchers with ($CC, else clang, gcc or cc)."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["clang", "gcc", "cc"]
    return next((path for name in names if (path := shutil.which(name))), None)


@functools.cache
def _warn_no_c_compiler() -> None:
    log.warning(
        "compile is on but no C compiler (clang, gcc, cc or $CC) is installed, which torch.compile needs "
        "on CUDA: serving eager with CUDA graphs. Install gcc to serve compiled, or set DDPM_COMPILE=false."
    )


def compiles_in_background(settings: EngineSettings, device: torch.device) -> bool:
    """Compiled, but after warm-up and off the engine thread: the CPU (see the module docstring). A slim
    image without a C++ compiler serves eager with one warning, not a failed build per start."""
    if not _background_wanted(settings, device):
        return False
    if cpp_compiler() is None:
        _warn_no_compiler()
        return False
    return True


def _background_wanted(settings: EngineSettings, device: torch.device) -> bool:
    return compile_enabled(settings, device) and device.type == "cpu" and settings.compile_in_background


def compiles_at_warm_up(settings: EngineSettings, device: torch.device) -> bool:
    if not compile_enabled(settings, device) or _background_wanted(settings, device):
        return False
    if device.type == "cuda" and settings.compile_backend == "inductor" and c_compiler() is None:
        _warn_no_c_compiler()
        return False
    return True


def prepare_denoiser(
    model: LoadedModel,
    settings: EngineSettings,
    device: torch.device,
    num_buckets: int,
    denoiser: Denoiser | None = None,
) -> Denoiser:
    """The callable the executor runs at warm-up: the model's torso cast to its precision, and wrapped
    in torch.compile when compiling at warm-up (CUDA; the compile happens at each bucket's first call).

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
    if not compiles_at_warm_up(settings, device):
        return denoise
    _allow_one_graph_per_bucket(num_buckets)
    # dynamic=False: one graph specialised per bucket shape, so nothing recompiles once every bucket has
    # been warmed up (the rows' t and labels are tensor values, which do not guard). Graph capture is
    # ours (see buckets.py): EngineSettings refuses the modes that capture graphs of their own.
    # A function or bound method is compiled as it is; a callable object through its bound __call__.
    target = denoise if inspect.isfunction(denoise) or inspect.ismethod(denoise) else denoise.__call__
    compiled = torch.compile(
        target, dynamic=False, backend=settings.compile_backend, mode=settings.compile_mode
    )
    log.info("network compiled at warm-up (backend %s, %d buckets)", settings.compile_backend, num_buckets)
    return compiled


def _allow_one_graph_per_bucket(num_buckets: int) -> None:
    """Dynamo keeps at most `recompile_limit` graphs per function and falls back to eager beyond it;
    each bucket is one graph, and the limit is per code object, which every engine of the process shares
    (one denoiser class): room for a few models' buckets."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    wanted = 4 * (num_buckets + 2)
    if getattr(config, name) < wanted:
        setattr(config, name, wanted)
    if getattr(config, "accumulated_recompile_limit", wanted) < wanted:
        config.accumulated_recompile_limit = wanted
