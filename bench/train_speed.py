"""Trainer throughput: optimiser steps per second with 1 and 2 intra-op threads, per preset.

The real training step (`service.training.trainer.train_step`: batch 64, bf16 autocast, hybrid loss,
Adam, EMA) on Fashion-MNIST, in this process, nothing else running. Thread counts alternate in blocks
(1, 2, 1, 2, ...) so that drift of the machine hits both alike; the figure is the median block.

    python -m bench.train_speed --presets fmnist-small fmnist-small-g8 --steps 20 --blocks 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from service.data.fashion_mnist import load_split, to_model_space
from service.diffusion.coefficients import coefficient_table
from service.diffusion.process import spaced_process
from service.training.config import TrainConfig
from service.training.trainer import new_run, train_step

WARM_STEPS = 3


def steps_per_second(
    preset: str, threads: int, steps: int, data: torch.Tensor, labels: torch.Tensor
) -> float:
    torch.set_num_threads(threads)
    run = new_run(TrainConfig(preset=preset, name=preset))
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
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per (preset, threads)")
    args = parser.parse_args()
    images, labels = load_split("train")
    data = to_model_space(images)
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.blocks):
        for preset in args.presets:
            for threads in args.threads:
                rate = steps_per_second(preset, threads, args.steps, data, labels)
                rates.setdefault((preset, threads), []).append(rate)
    print("| preset | threads | steps/s (median block) | blocks |")
    print("|---|---|---|---|")
    for (preset, threads), values in rates.items():
        blocks = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {preset} | {threads} | {statistics.median(values):.2f} | {blocks} |")


if __name__ == "__main__":
    main()
