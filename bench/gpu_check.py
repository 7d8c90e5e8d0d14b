"""GPU check: one prepared, staged run that says whether the CUDA path is right and fast (issue 32).

    python -m bench.gpu_check --out gpu.json              # on a CUDA machine; about 8 minutes
    python -m bench.gpu_check --dry-run --out dry.json    # every stage it can, on the CPU

Stages (each writes the JSON file again when it ends, so a crash keeps what came before):
  1. preflight: torch, CUDA, the card, a C compiler for Triton's launchers;
  2. precision: fp32 eager with TF32 off is the reference, then fp32 + TF32, fp16 eager, fp16 compile,
     fp32 compile + graphs and fp16 compile + graphs, each timed with CUDA events at one batch, with MFU
     (FLOPs from FlopCounterMode) and the largest |eps - eps_ref| relative to max |eps_ref|;
  3. buckets: the serving runner (fp16 + compile + graphs, every bucket up to the batch) at 1, 3, 5,
     16, 33 and 64 rows and at every bucket size, in shuffled order, against fp16 eager at those rows;
  4. step: Executor.step at the batch for 50 steps under torch.cuda.set_sync_debug_mode("warn"): the
     syncs per step (and where), and served ÷ runner (1 - the host-overhead share);
  5. real weights: the bundled model, 16 seeds at K=50, serving configuration vs fp32 eager images;
  6. two engines warming up on one GPU at once, then the same request on each.
Every stage has a verdict (pass, fail, skipped, error) from the criteria written beside its numbers; the
exit status is 0 only when no stage failed or erred (and, on a device, none was skipped).

--dry-run runs on the CPU with the tiny-test architecture at batch 8, K=10 in stages 4 and 5 and 3
timed calls: fp16 becomes bf16, TF32 and compile are skipped (a CPU compile takes minutes per size),
and graphs are emulated (EngineSettings.emulate_graphs). Its criteria on speed are not judged. It
proves the script, not the GPU. Nothing here imports loadtest/.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from service.engine.compile import c_compiler
from service.engine.engine import Engine
from service.engine.executor import Executor
from service.engine.generation import GenerationSpec
from service.engine.request import Request, RowState
from service.engine.settings import EngineSettings, Precision
from service.engine.tables import StepTables
from service.model.factory import build_model
from service.model.presets import get_preset
from service.model.store import LoadedModel, eps_v_denoiser, load_model, manifest_from_preset

PRESET, DRY_PRESET = "imagenet64_cond_270M_250K", "tiny-test"
BUNDLED = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-small"
ROWS = (1, 3, 5, 16, 33, 64)
# Dense fp16 tensor-core peaks (NVIDIA datasheets, TFLOPS); first match wins. A plain "H100" is the SXM.
PEAK_FP16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),
    ("A100", 312.0),
)
# Bounds on max |eps - eps_ref| / max |eps_ref|: first settings, to be revisited after the first GPU run.
BOUND_FP32, BOUND_TF32, BOUND_REDUCED = 1e-3, 1e-2, 3e-2
SPEEDUP_BAR, SERVED_BAR, MAX_SYNCS_PER_STEP = 3.0, 0.9, 1.0
MEAN_PIXEL_BOUND = 4.0  # mean |Δ| of uint8 images, serving vs fp32 eager, same seeds


@dataclass
class Run:
    device: torch.device
    dry_run: bool
    batch: int
    deadline: float
    model_dir: Path | None
    peak: float | None
    shared: dict[str, Any] = field(default_factory=dict)  # what later stages reuse (executors, timings)

    @property
    def calls(self) -> int:
        """Timed calls per configuration (a dry run proves the code, its timings mean nothing)."""
        return 3 if self.dry_run else 20

    @property
    def steps(self) -> int:
        """K of stages 4 and 5: 50 on a device, 10 in a dry run (the CPU is 100x slower)."""
        return 10 if self.dry_run else 50

    @property
    def reduced(self) -> Precision:
        return Precision.BF16 if self.dry_run else Precision.FP16

    def settings(
        self, precision: Precision, compile: bool, graphs: bool, buckets: tuple[int, ...]
    ) -> EngineSettings:
        return EngineSettings(
            max_batch=buckets[-1],
            buckets=buckets,
            precision=precision,
            compile=compile,
            compile_in_background=False,
            cuda_graphs=graphs and not self.dry_run,
            emulate_graphs=graphs and self.dry_run,
            warmup_iterations=2,
        )


def verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def network(run: Run) -> LoadedModel:
    """A fresh float32 copy (precision casts mutate the network): --model, or seeded random weights."""
    if run.model_dir is not None:
        return load_model(run.model_dir, run.device)
    preset = get_preset(DRY_PRESET if run.dry_run else PRESET)
    manifest = manifest_from_preset(preset)
    torch.manual_seed(0)
    net = build_model(preset.unet).eval().requires_grad_(False).to(run.device)
    return LoadedModel(manifest, net, eps_v_denoiser(manifest, net), Path(f"<random {preset.name}>"))


def inputs(model: LoadedModel, rows: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    m = model.manifest
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, m.image_channels, m.image_size, m.image_size), generator=generator)
    t = torch.rand(rows, generator=generator) * m.diffusion.num_timesteps
    y = torch.randint(0, m.num_classes or 1, (rows,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


def seconds_per_call(call: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Mean seconds per call: CUDA events around the calls on a device, the wall clock on the CPU."""
    for _ in range(3):
        call()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - start) / calls
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        call()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000 / calls


def relative_error(eps: torch.Tensor, reference: torch.Tensor) -> float:
    error = (
        (eps.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12)
    ).item()
    return float(error) if error == error else float("inf")


# -- stages -------------------------------------------------------------------------------------------


def preflight(run: Run) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    results = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu (dry run)",
        "c_compiler": c_compiler(),
        "peak_fp16_tflops": run.peak,
    }
    ok = (run.dry_run or cuda) and (run.dry_run or results["c_compiler"] is not None)
    criteria = [
        "a CUDA device is visible (or --dry-run)",
        "a C compiler for Triton's launchers (on a device)",
    ]
    return {"verdict": verdict(ok), "criteria": criteria, "results": results}


def precision_configs(run: Run) -> dict[str, Any]:
    batch, device = run.batch, run.device
    fp32_model, reduced_model = network(run), network(run)
    x, t, y = inputs(fp32_model, batch, device)
    with FlopCounterMode(display=False) as counter:
        fp32_model.denoiser(x, t, y)
    flops = float(counter.get_total_flops())
    one = (batch,)
    serving_buckets = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b < batch) + one
    configs = [  # name, model, settings, TF32, bound (None: the reference)
        ("fp32 eager, TF32 off", fp32_model, run.settings(Precision.FP32, False, False, one), False, None),
        (
            "fp32 eager, TF32 on",
            fp32_model,
            run.settings(Precision.FP32, False, False, one),
            True,
            BOUND_TF32,
        ),
        (
            f"{run.reduced} eager",
            reduced_model,
            run.settings(run.reduced, False, False, one),
            False,
            BOUND_REDUCED,
        ),
        (
            f"{run.reduced} compile",
            reduced_model,
            run.settings(run.reduced, True, False, one),
            False,
            BOUND_REDUCED,
        ),
        (
            "fp32 compile + graphs",
            fp32_model,
            run.settings(Precision.FP32, True, True, one),
            False,
            BOUND_FP32,
        ),
        (
            f"{run.reduced} compile + graphs (serving)",
            reduced_model,
            run.settings(run.reduced, True, True, serving_buckets),
            False,
            BOUND_REDUCED,
        ),
    ]
    rows: list[dict[str, Any]] = []
    reference_eps, reference_s, ok = None, None, True
    for name, model, settings, allow_tf32, bound in configs:
        if run.dry_run and "serving" in name:  # later stages need it: emulated graphs, no compile
            name, settings = name.replace("compile + ", ""), replace(settings, compile=False)
        elif run.dry_run and (allow_tf32 or settings.compile):
            rows.append({"config": name, "verdict": "skipped", "why": "dry run: needs CUDA"})
            continue
        with tf32(allow_tf32):
            executor = Executor(model, settings, StepTables(model.manifest.diffusion), device)
            start = time.perf_counter()
            executor.warm_up()
            setup = time.perf_counter() - start
            with torch.no_grad():
                seconds = seconds_per_call(partial(executor.runner, x, t, y), device, run.calls)
                eps = executor.runner(x, t, y)[1].float().clone()
        if "serving" in name:
            run.shared.update(serving=executor, serving_s=seconds, reduced_model=reduced_model)
        if name.startswith(f"{run.reduced} eager"):
            run.shared["reduced_eager"] = executor
        row: dict[str, Any] = {"config": name, "ms_per_call": seconds * 1e3, "setup_s": setup}
        row["mfu"] = None if run.peak is None else flops / seconds / (run.peak * 1e12)
        if reference_eps is None:
            reference_eps, reference_s = eps, seconds
        else:
            assert reference_s is not None
            row.update(
                rel_error=relative_error(eps, reference_eps), bound=bound, speedup=reference_s / seconds
            )
            row["verdict"] = verdict(row["rel_error"] <= bound)  # type: ignore[operator]
            ok &= row["verdict"] == "pass"
        rows.append(row)
    bounds = f"{BOUND_FP32:g} fp32, {BOUND_TF32:g} TF32, {BOUND_REDUCED:g} fp16"
    criteria = [f"rel. error vs the reference within each config's bound ({bounds})"]
    full = not run.dry_run and run.model_dir is None and batch == 64
    speedup: float | None = next(
        (r["speedup"] for r in rows if "serving" in r["config"] and "speedup" in r), None
    )
    if full and speedup is not None:
        criteria.append(f"fp16 + compile + graphs ÷ fp32 eager ≥ {SPEEDUP_BAR}× ({PRESET}, batch 64)")
        ok &= speedup >= SPEEDUP_BAR
    results = {"batch": batch, "gflop_per_image": flops / batch / 1e9, "configs": rows}
    return {"verdict": verdict(ok), "criteria": criteria, "results": results}


def buckets(run: Run) -> dict[str, Any]:
    serving: Executor = run.shared["serving"]
    eager: Executor = run.shared["reduced_eager"]
    sizes = sorted({*(r for r in ROWS if r <= run.batch), *serving.buckets})
    random.Random(0).shuffle(sizes)
    model: LoadedModel = run.shared["reduced_model"]
    checked = []
    with torch.no_grad():
        for rows in sizes:
            x, t, y = inputs(model, rows, run.device, seed=rows)
            bucket, eps, _ = serving.runner(x, t, y)
            error = relative_error(eps, eager.runner(x, t, y)[1])
            checked.append({"rows": rows, "bucket": bucket, "rel_error": error})
    ok = all(c["rel_error"] <= BOUND_REDUCED for c in checked)
    criteria = [f"every row count's rel. error vs eager at the same precision ≤ {BOUND_REDUCED:g}"]
    return {"verdict": verdict(ok), "criteria": criteria, "results": {"order": sizes, "checked": checked}}


def step_syncs(run: Run) -> dict[str, Any]:
    steps = run.steps
    executor: Executor = run.shared["serving"]
    model: LoadedModel = run.shared["reduced_model"]
    rows = []
    for i in range(run.batch):
        request = Request(
            f"s{i}/0",
            f"s{i}",
            model.name,
            class_label=i % (model.manifest.num_classes or 1),
            steps=steps,
            seed=i,
        )
        row = RowState(request, executor.tables.get(steps).num_steps)
        row.slot = i
        rows.append(row)
    executor.admit(rows)
    executor.step(rows)  # the first step: tables and pinned buffers made
    syncs_before, seconds = executor.transfers.syncs, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if run.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps - 1):
                start = time.perf_counter()
                executor.step(rows)  # ends with its one download: the step's time is real
                seconds.append(time.perf_counter() - start)
        finally:
            if run.device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    implicit = [w for w in caught if "synchroniz" in str(w.message)]
    sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in implicit})
    explicit = executor.transfers.syncs - syncs_before
    per_step = (len(implicit) + explicit) / len(seconds)
    step_s = float(np.median(seconds))
    served = run.shared["serving_s"] / step_s
    ok = per_step <= MAX_SYNCS_PER_STEP
    criteria = [
        f"syncs per step (implicit, caught by sync debug mode, + the download) ≤ {MAX_SYNCS_PER_STEP:g}"
    ]
    if not run.dry_run:
        criteria.append(f"served ÷ runner (runner time ÷ step time at batch {run.batch}) ≥ {SERVED_BAR}")
        ok &= served >= SERVED_BAR
    results = {
        "steps_timed": len(seconds),
        "implicit_syncs": len(implicit),
        "implicit_sync_sites": sites,
        "download_syncs": explicit,
        "syncs_per_step": per_step,
        "median_step_ms": step_s * 1e3,
        "runner_ms": run.shared["serving_s"] * 1e3,
        "served_over_runner": served,
        "host_overhead_share": 1 - served,
    }
    return {"verdict": verdict(ok), "criteria": criteria, "results": results}


def images(executor: Executor, model: LoadedModel, seeds: int, steps: int) -> tuple[list[np.ndarray], int]:
    rows = []
    for i in range(seeds):
        request = Request(f"r{i}/0", f"r{i}", model.name, class_label=i % 10, steps=steps, seed=i)
        row = RowState(request, executor.tables.get(steps).num_steps)
        row.slot = i
        rows.append(row)
    executor.admit(rows)
    done: dict[int, np.ndarray] = {}
    bad = 0
    while rows:
        outcome = executor.step(rows)
        bad += len(outcome.non_finite)
        done.update({int(row.request.group_id[1:]): image for row, image in outcome.finished})
        ended = {id(r) for r in outcome.non_finite} | {id(r) for r, _ in outcome.finished}
        rows = [row for row in rows if id(row) not in ended]
    return [done[i] for i in sorted(done)], bad


def real_weights(run: Run, seeds: int = 16) -> dict[str, Any]:
    steps = run.steps
    sixteen = (1, 2, 4, 8, 16)
    fp32 = run.settings(Precision.FP32, False, False, sixteen)
    serving = run.settings(Precision.FP32 if run.dry_run else Precision.FP16, not run.dry_run, True, sixteen)
    results: dict[str, Any] = {"model": str(BUNDLED), "seeds": seeds, "K": steps}
    made = []
    for name, settings in (("fp32 eager", fp32), ("serving", serving)):
        model = load_model(BUNDLED, run.device)
        executor = Executor(
            model, settings, StepTables(model.manifest.diffusion, gamma=model.gamma_per_step), run.device
        )
        executor.warm_up()
        pictures, bad = images(executor, model, seeds, steps)
        made.append(pictures)
        results[name] = {"precision": settings.precision.value, "images": len(pictures), "non_finite": bad}
    (reference, served) = made
    ok = len(reference) == len(served) == seeds
    if ok:
        difference = np.abs(np.stack(reference).astype(np.int16) - np.stack(served).astype(np.int16))
        results.update(mean_abs_pixel=float(difference.mean()), max_abs_pixel=int(difference.max()))
        ok = results["mean_abs_pixel"] <= MEAN_PIXEL_BOUND
    criteria = [f"all {seeds} images made on both sides", f"mean |Δpixel| ≤ {MEAN_PIXEL_BOUND:g} of 255"]
    return {"verdict": verdict(ok), "criteria": criteria, "results": results}


def two_engines(run: Run) -> dict[str, Any]:
    settings = run.settings(
        Precision.FP32 if run.dry_run else Precision.AUTO, not run.dry_run, True, (1, 2, 4, 8, 16)
    )
    engines = [
        Engine(load_model(BUNDLED, run.device), settings, device=run.device, name=f"check-{i}")
        for i in range(2)
    ]
    start = time.perf_counter()
    for engine in engines:
        engine.start()
    try:
        ready = [engine.wait_ready(max(1.0, run.deadline - time.monotonic())) for engine in engines]
        warm_s = time.perf_counter() - start
        same = False
        if all(ready):
            spec = GenerationSpec(engines[0].model_name, 7, 10, num_images=4, seed=3)
            first, second = (engine.generate(spec, timeout=120) for engine in engines)
            same = all(np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    finally:
        for engine in engines:
            engine.stop(drain=False, timeout=30)
    results = {"ready": ready, "warm_up_s": warm_s, "identical_images": same}
    criteria = ["both engines turn ready", "the same request gives the same images on both"]
    return {"verdict": verdict(all(ready) and same), "criteria": criteria, "results": results}


STAGES: tuple[tuple[str, Callable[[Run], dict[str, Any]]], ...] = (
    ("preflight", preflight),
    ("precision", precision_configs),
    ("buckets", buckets),
    ("step", step_syncs),
    ("real weights", real_weights),
    ("two engines", two_engines),
)


def check(run: Run, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"dry_run": run.dry_run, "device": str(run.device), "stages": []}
    for number, (name, stage) in enumerate(STAGES, start=1):
        start = time.perf_counter()
        if time.monotonic() > run.deadline:
            entry: dict[str, Any] = {"verdict": "skipped", "why": "out of time (--budget-s)"}
        else:
            try:
                entry = stage(run)
            except Exception as e:
                entry = {
                    "verdict": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                }
        report["stages"].append(
            {"stage": number, "name": name, **entry, "seconds": time.perf_counter() - start}
        )
        print(f"stage {number} {name}: {entry['verdict']}", file=sys.stderr)
        if entry["verdict"] == "error" and number == 1:
            break
        write(report, out)
    allowed = {"pass", "skipped"} if run.dry_run else {"pass"}
    report["verdict"] = verdict(
        all(s["verdict"] in allowed for s in report["stages"]) and len(report["stages"]) == len(STAGES)
    )
    write(report, out)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="the JSON report (rewritten after each stage)"
    )
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny-test architecture, batch 8")
    parser.add_argument("--model", type=Path, help=f"a model folder instead of random weights of {PRESET}")
    parser.add_argument("--batch", type=int, help="rows per call (default 64; 8 in a dry run)")
    parser.add_argument("--budget-s", type=float, default=480, help="stages not started by then are skipped")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak, for unknown cards")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check needs CUDA (torch.cuda.is_available() is False); --dry-run runs it on the CPU",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = args.peak_tflops or next((p for key, p in PEAK_FP16_TFLOPS if key in name), None)
    batch = args.batch or (8 if args.dry_run else 64)
    run = Run(device, args.dry_run, batch, time.monotonic() + args.budget_s, args.model, peak)
    report = check(run, args.out)
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
