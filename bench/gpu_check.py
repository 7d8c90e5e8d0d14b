"""GPU check: fp16 + torch.compile + CUDA graphs vs fp32 eager on the ImageNet-64 270M architecture.

    python -m bench.gpu_check --out gpu.md            # random weights of imagenet64_cond_270M_250K
    python -m bench.gpu_check --model DIR --out gpu.md  # a converted checkpoint (ddpm convert)

Needs CUDA: without it, it exits with status 2 and says so. On the card it
  1. counts the FLOPs of one forward at the batch size (torch.utils.flop_counter.FlopCounterMode),
  2. times the engine's bucket runner at that batch: fp32 eager (no compile, no graphs) vs the serving
     configuration EngineSettings(precision=fp16, compile=True, cuda_graphs=True) -- the same Executor
     and BucketRunner the server uses, so input copies and output clones are included on both sides,
  3. reports the throughput ratio and MFU = FLOPs per call ÷ seconds per call ÷ the card's peak dense
     fp16 tensor throughput (looked up by device name; the assumption is printed),
  4. runs a full K=250 fp16 trajectory for a whole bucket of images through the fp16 executor, checking
     every step's eps, v and x for finiteness (the engine's own check) and that every image is produced.
Random weights exercise the kernels and the fp16 ranges of a random network; a real checkpoint (--model)
is the stronger test of the fp16 trajectory. Results are written as a markdown snippet.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from loadtest import report
from service.engine.executor import Executor
from service.engine.generation import GenerationSpec
from service.engine.request import RowState
from service.engine.scheduler import Scheduler
from service.engine.settings import EngineSettings, Precision
from service.engine.tables import StepTables
from service.model.denoiser import EpsVDenoiser
from service.model.factory import build_model
from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, manifest_from_preset

PRESET = "imagenet64_cond_270M_250K"
TRAJECTORY_STEPS = 250
# Dense (no sparsity) fp16 tensor-core peaks from NVIDIA's datasheets, in TFLOPS; first match wins, so
# the specific names come before the generic ones. A plain "H100" is taken to be the SXM part.
PEAK_FP16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),
    ("A100", 312.0),
)


NO_CUDA = "no CUDA device is visible (torch.cuda.is_available() is False); run this on a GPU machine"


class NeedsCuda(RuntimeError):
    pass


@dataclass(frozen=True)
class Timing:
    name: str
    seconds_per_call: float
    setup_s: float  # executor build + warm-up (compilation and graph capture for the fp16 path)

    def mfu(self, flops: float, peak_tflops: float | None) -> float | None:
        return None if peak_tflops is None else flops / self.seconds_per_call / (peak_tflops * 1e12)


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_FP16_TFLOPS if key in device_name), None)


def random_model(preset_name: str, device: torch.device, seed: int = 0) -> LoadedModel:
    """Random weights (the same for every call with this seed), float32, eval mode, on `device`."""
    preset = get_preset(preset_name)
    manifest = manifest_from_preset(preset)
    torch.manual_seed(seed)
    net = build_model(preset.unet).eval().requires_grad_(False).to(device)
    denoiser = EpsVDenoiser(
        net, learn_sigma=manifest.diffusion.learn_sigma, class_conditional=manifest.num_classes is not None
    )
    return LoadedModel(manifest=manifest, net=net, denoiser=denoiser, path=Path(f"<random {preset_name}>"))


def inputs(model: LoadedModel, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    m = model.manifest
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, m.image_channels, m.image_size, m.image_size), generator=generator)
    t_max = 1000.0 if m.diffusion.rescale_timesteps else float(m.diffusion.num_timesteps)
    t = torch.rand(batch, generator=generator) * t_max
    y = torch.randint(0, m.num_classes or 1, (batch,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


@torch.no_grad()
def count_flops(model: LoadedModel, batch: int, device: torch.device) -> float:
    x, t, y = inputs(model, batch, device)
    with FlopCounterMode(display=False) as counter:
        model.denoiser(x, t, y if model.manifest.num_classes else None)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_executor(
    name: str, model: LoadedModel, settings: EngineSettings, device: torch.device, calls: int
) -> tuple[Timing, Executor]:
    """Build and warm up an executor with one bucket, then time `calls` runner calls at that batch."""
    start = time.perf_counter()
    executor = Executor(model, settings, StepTables(model.manifest.diffusion), device)
    executor.warm_up()
    _sync(device)
    setup = time.perf_counter() - start
    x, t, y = inputs(model, settings.max_batch, device)
    labels = y if model.manifest.num_classes else None
    for _ in range(3):
        executor.runner(x, t, labels)
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        executor.runner(x, t, labels)
    _sync(device)
    return Timing(name, (time.perf_counter() - start) / calls, setup), executor


@torch.no_grad()
def output_difference(
    a: Executor, b: Executor, model: LoadedModel, batch: int, device: torch.device
) -> float:
    """Largest |eps_a - eps_b| relative to the largest |eps_a| on one batch (fp16 vs fp32 agreement)."""
    x, t, y = inputs(model, batch, device)
    labels = y if model.manifest.num_classes else None
    _, eps_a, _ = a.runner(x, t, labels)
    _, eps_b, _ = b.runner(x, t, labels)
    return float((eps_a - eps_b).abs().max() / eps_a.abs().max().clamp_min(1e-12))


@dataclass(frozen=True)
class Trajectory:
    images: int
    steps: int
    non_finite: int  # rows the engine's per-step check caught
    finished: int
    pixel_std: float  # of the uint8 results: 0 would mean blank images
    seconds: float

    @property
    def ok(self) -> bool:
        return self.non_finite == 0 and self.finished == self.images and self.pixel_std > 0


@torch.no_grad()
def trajectory(executor: Executor, model: LoadedModel, steps: int = TRAJECTORY_STEPS) -> Trajectory:
    """A whole bucket of images, K=steps, driven through the executor as the engine core drives it."""
    images = executor.num_slots
    classes = model.manifest.num_classes
    rows = []
    for i in range(images):
        spec = GenerationSpec(model.name, i % classes if classes else None, steps, seed=i)
        (request,) = spec.rows(f"traj-{i}")
        rows.append(RowState(request, executor.tables.get(steps).num_steps))
    scheduler = Scheduler(images, images)
    scheduler.add(rows)
    plan = scheduler.schedule()
    executor.admit(plan.admitted)
    running, finished, bad = list(plan.running), [], 0
    start = time.perf_counter()
    while running:
        outcome = executor.step(running)
        bad += len(outcome.non_finite)
        ended = {id(row) for row in outcome.non_finite} | {id(row) for row, _ in outcome.finished}
        finished += [image for _, image in outcome.finished]
        for row in running:
            if id(row) in ended:
                executor.release(row)
        running = [row for row in running if id(row) not in ended]
    _sync(executor.device)
    std = float(np.stack(finished).std()) if finished else 0.0
    return Trajectory(images, steps, bad, len(finished), std, time.perf_counter() - start)


def run(
    model_dir: Path | None, batch: int, calls: int, device: torch.device, peak: float | None
) -> tuple[str, bool]:
    """The markdown snippet and whether the K=250 fp16 trajectory stayed finite."""
    if device.type != "cuda":
        raise NeedsCuda(f"gpu_check needs CUDA: {NO_CUDA}")

    def fresh() -> LoadedModel:
        # Two copies: the fp16 executor casts its model's torso in place.
        return load_model(model_dir, device) if model_dir else random_model(PRESET, device)

    fp32_model, fp16_model = fresh(), fresh()
    params = sum(p.numel() for p in fp32_model.net.parameters())
    flops = count_flops(fp32_model, batch, device)
    base = EngineSettings(max_batch=batch, buckets=(batch,), warmup_iterations=3)
    eager = replace(base, precision=Precision.FP32, compile=False, cuda_graphs=False)
    fast = replace(base, precision=Precision.FP16, compile=True, cuda_graphs=True)
    slow_t, slow_x = time_executor("fp32 eager", fp32_model, eager, device, calls)
    fast_t, fast_x = time_executor("fp16 + compile + CUDA graphs", fp16_model, fast, device, calls)
    difference = output_difference(slow_x, fast_x, fp32_model, batch, device)
    traj = trajectory(fast_x, fp16_model)

    name = torch.cuda.get_device_name(device)
    rows = []
    for timing in (slow_t, fast_t):
        mfu = timing.mfu(flops, peak)
        rows.append(
            (
                timing.name,
                f"{timing.seconds_per_call * 1000:.2f} ms",
                f"{batch / timing.seconds_per_call:.0f}",
                "–" if mfu is None else f"{mfu:.1%}",
                f"{timing.setup_s:.0f} s",
            )
        )
    source = str(model_dir) if model_dir else f"random weights of `{PRESET}` (seed 0)"
    peak_text = "unknown card: pass --peak-tflops" if peak is None else f"{peak:.1f} TFLOPS dense fp16"
    lines = [
        f"### GPU check on {name}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; model: {source}, {params / 1e6:.0f}M "
        f"parameters; batch {batch} (one bucket), {calls} timed calls of the engine's bucket runner per "
        f"configuration. FLOPs per call (FlopCounterMode, one forward): {flops / 1e12:.2f} TFLOP "
        f"({flops / batch / 1e9:.1f} GFLOP per image). Peak assumed for MFU: {peak_text}. TF32: matmul "
        f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} (torch defaults).",
        report.table(["Configuration", "per call", "images·steps/s", "MFU", "build + warm-up"], rows),
        f"**Throughput ratio fp16 + compile + graphs ÷ fp32 eager: "
        f"{slow_t.seconds_per_call / fast_t.seconds_per_call:.2f}×.** Largest |Δeps| fp16 vs fp32 on one "
        f"batch, relative to max |eps|: {difference:.2e}.",
        f"**K={traj.steps} fp16 trajectory: {'finite' if traj.ok else 'FAILED'}** — {traj.images} images "
        f"(one bucket), {traj.non_finite} rows caught non-finite by the engine's per-step check, "
        f"{traj.finished} images produced, pixel std {traj.pixel_std:.1f}, {traj.seconds:.1f} s.",
    ]
    return "\n\n".join(lines), traj.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random weights of " + PRESET)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak, for unknown cards")
    parser.add_argument("--out", type=Path, help="write the markdown snippet here (default: stdout)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check needs CUDA: {NO_CUDA}", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(device))
    snippet, ok = run(args.model, args.batch, args.calls, device, peak)
    if args.out:
        args.out.write_text(snippet + "\n")
    print(snippet)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
