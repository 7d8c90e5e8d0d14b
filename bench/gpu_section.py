"""The GPU section of docs/performance.md (bench.performance writes it; no GPU has run the check yet)."""

from __future__ import annotations

MARKDOWN = """## GPU check

**No GPU has run this check yet: none of the GPU numbers below exist, and none is claimed.** The CUDA
path (fp16 torso, `torch.compile`, one CUDA graph per bucket, several engines per process) has only been
tested on the CPU, with graphs emulated (`tests/engine/test_gpu_path.py`; the tests that need a device
are marked `gpu`). `bench/gpu_check.py` is the one prepared run that decides it on a card, in about
8 minutes (`--budget-s`, default 480: stages not started by then count as failed):

```
.venv/bin/python -m bench.gpu_check --out gpu.json              # on a CUDA machine
.venv/bin/python -m bench.gpu_check --dry-run --out dry.json    # the same stages on the CPU
```

It writes the JSON report after every stage (a crash keeps the stages before it), gives each stage a
verdict from the criteria written beside its numbers, and exits 0 only when every stage passed (1
otherwise; 2 without CUDA and without `--dry-run`). It imports nothing from `loadtest/`.

- **1 preflight**: torch and CUDA versions, the card, a C compiler for Triton's kernel launchers.
- **2 precision**: `imagenet64_cond_270M_250K` (random weights, or `--model`) at batch 64. fp32 eager
  with TF32 off is the reference; fp32 + TF32, fp16 eager, fp16 compile, fp32 compile + graphs and fp16
  compile + graphs are each timed with CUDA events, with MFU (FLOPs from `FlopCounterMode`, the peak by
  card name or `--peak-tflops`) and max |Δeps| ÷ max |eps_ref| within 1e-3 (fp32), 1e-2 (TF32) or 3e-2
  (fp16). Bar: fp16 + compile + graphs ÷ fp32 eager ≥ 3×.
- **3 buckets**: the serving runner (every bucket up to 64) at 1, 3, 5, 16, 33 and 64 rows and at every
  bucket size, in shuffled order, against fp16 eager at the same rows: within 3e-2.
- **4 step**: `Executor.step` at 64 rows for 50 steps under `torch.cuda.set_sync_debug_mode("warn")`:
  at most 1 sync per step (the report lists where any implicit one happens); served ÷ runner ≥ 0.9.
- **5 real weights**: the bundled model, 16 seeds at K=50: fp16 + compile + graphs against fp32 eager
  images, no non-finite row and a mean |Δpixel| ≤ 4 of 255.
- **6 two engines**: two engines of the bundled model warming up on one GPU at once (their captures
  take turns), then the same request on each gives the same images.

The bounds are first settings, to be revisited with the first run's numbers. `--dry-run` runs the stages
on the CPU with the tiny-test architecture at batch 8 and K=10: fp16 becomes bf16, TF32 and compile are
skipped, graphs are emulated, and speed is reported but not judged; it proves the script, not the card
(2 min 45 s on this 2-core machine, every stage passing).

Precision: `DDPM_PRECISION=auto` serves an fp16 torso on CUDA whatever a manifest's `use_fp16` says.
That flag records how the reference samples a checkpoint, and improved-diffusion's sampler never uses
fp16 (its 270M model says false), so following it would serve those checkpoints and the bundled model in
fp32; stage 5 is the check on real weights, and `DDPM_PRECISION=fp32` serves a model that fails it."""
