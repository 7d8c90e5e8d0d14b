"""Trainer throughput: optimiser steps per second with 1 and 2 intra-op threads, per preset and precision.

The real training step (`service.training.trainer.train_step`: batch 64, hybrid loss, Adam, EMA) on
Fashion-MNIST, in this process, nothing else running. Settings alternate in blocks (1, 2, 1, 2, ...) so
that drift of the machine hits all alike; the figure is the median block.

Precision is an axis because bf16 autocast is only fast where the CPU computes in bf16 natively
(AVX512-BF16 / AMX): on a CPU without it, oneDNN emulates the format and a step is several times slower
than in fp32, which decides whether `ddpm train --fp32` is the faster run on a given machine.

    python -m bench.train_speed --presets fmnist-small fmnist-small-g8 --precisions bf16 fp32 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from service.data.fashion_mnist import load_split, to_model_space
from service.diffusion.coefficients import coefficient_table
from service.diffusion.process import spaced_process
from service.engine.compile import native_bf16
from service.training.config import TrainConfig
from service.training.trainer import new_run, train_step

WARM_STEPS = 3


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        if cpuinfo.is_file()
        else []
    )
    return names[0] if names else "unknown CPU"


def steps_per_second(
    preset: str, precision: str, threads: int, steps: int, data: torch.Tensor, labels: torch.Tensor
) -> float:
    torch.set_num_threads(threads)
    run = new_run(TrainConfig(preset=preset, name=preset, bf16=precision == "bf16"))
    table = coefficient_table(spaced_process(run.manifest.diffusion))
    run.model.train()
    for _ in range(WARM_STEPS):
        train_step(run, data, labels, table)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run, data, labels, table)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fmnist-small", "fmnist-small-g8"])
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per (preset, threads)")
    args = parser.parse_args()
    images, labels = load_split("train")
    data = to_model_space(images)
    rates: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.blocks):
        for preset in args.presets:
            for precision in args.precisions:
                for threads in args.threads:
                    rate = steps_per_second(preset, precision, threads, args.steps, data, labels)
                    rates.setdefault((preset, precision, threads), []).append(rate)
    print(f"CPU: {cpu_model()}, native bf16: {native_bf16()}; torch {torch.__version__}")
    print("| preset | precision | threads | steps/s (median block) | blocks |")
    print("|---|---|---|---|---|")
    for (preset, precision, threads), values in rates.items():
        blocks = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {preset} | {precision} | {threads} | {statistics.median(values):.2f} | {blocks} |")


if __name__ == "__main__":
    main()
