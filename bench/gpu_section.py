"""The GPU section of docs/performance.md for a run on a machine without a GPU."""

from __future__ import annotations

MARKDOWN = """## GPU

**No GPU was available for this run, so none of the GPU numbers are measured yet.** In particular these
are NOT measured:

- fp16 torso + `torch.compile` + CUDA graphs vs fp32 eager on the ImageNet-64 270M architecture
  (`imagenet64_cond_270M_250K`) at batch 64: the throughput ratio and the MFU of each configuration;
- the no-NaN check of a full K=250 fp16 trajectory.

`bench/gpu_check.py` does exactly that when run on a CUDA machine (on a CPU-only machine it exits
with status 2 and "gpu_check needs CUDA"):

```
.venv/bin/python -m bench.gpu_check --out gpu.md                   # random weights, batch 64
.venv/bin/python -m bench.gpu_check --model DIR --out gpu.md       # a converted checkpoint
```

It builds two copies of the network (random weights, seed 0, unless `--model` is given), counts the FLOPs
of one forward at batch 64 with `torch.utils.flop_counter.FlopCounterMode` (178 GFLOP per image for this
architecture, counted here on the CPU), and times the engine's own `Executor` / `BucketRunner` at one
bucket of 64: `EngineSettings(precision=fp32, compile=False, cuda_graphs=False)` vs
`EngineSettings(precision=fp16, compile=True, cuda_graphs=True)`. MFU is FLOPs per call ÷ seconds per
call ÷ the card's dense fp16 tensor peak, looked up by device name (assumption: H100 SXM and H200
989.4 TFLOPS, H100 PCIe 756.5, H100 NVL 835.5, A100 312; `--peak-tflops` for others). It then drives
64 images through a full K=250 trajectory on the fp16 executor, counting the rows that the engine's
per-step finiteness check (eps, v and x) catches, and writes the results as a markdown snippet to paste
here with the card's name. Random weights test the kernels and the fp16 path, not the activation ranges of
trained weights; `--model` with a converted checkpoint is the stronger fp16 test."""
