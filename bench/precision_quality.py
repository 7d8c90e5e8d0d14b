"""Does a bf16 torso cost quality? FID, precision/recall and class accuracy of the bundled model at fp32 and
bf16, same seeds, same classifier, as `ddpm calibrate` scores a point.

    python -m bench.precision_quality --num-samples 500 --steps 25,50 --out docs/precision.md

Why: on CPUs with native bf16 (AMX / AVX512-BF16) a bf16 torso doubles compiled throughput
(docs/performance.md), so bf16 would be the faster default there; the images change, so the question is
by how much quality moves, measured next to the fp32 numbers on the same seeds. Also reported: the
per-pixel difference between the fp32 and bf16 image of each seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.model import BUNDLED_MODEL
from loadtest import report
from service.data.fashion_mnist import load_split, to_model_space
from service.engine.compile import torso_dtype
from service.engine.settings import Precision
from service.model.store import load_model
from service.quality.classifier import load_classifier
from service.quality.generate import generate
from service.quality.metrics import class_accuracy, extract_features, frechet_distance, precision_recall
from service.quality.sampler_kinds import sampler_kind

CLASSIFIER = BUNDLED_MODEL.parent / "fmnist-classifier"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", default="25,50")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    steps = [int(k) for k in args.steps.split(",")]
    classifier = load_classifier(CLASSIFIER)
    real = extract_features(classifier, to_model_space(load_split("test", None)[0]))
    rows = []
    for k in steps:
        images = {}
        for precision in (Precision.FP32, Precision.BF16):
            model = load_model(BUNDLED_MODEL)
            dtype = torso_dtype(precision, torch.device("cpu"))
            if dtype != torch.float32:
                model.net.convert_torso_to(dtype)  # type: ignore[operator]
            start = time.perf_counter()
            fake, labels, _ = generate(model, sampler_kind("ddpm"), k, args.num_samples, 0, args.batch_size)
            seconds = time.perf_counter() - start
            images[precision] = fake
            features = extract_features(classifier, fake)
            p, r = precision_recall(real[: len(fake)], features, k=3)
            rows.append(
                (
                    str(k),
                    precision.value,
                    f"{frechet_distance(real, features):.2f}",
                    f"{p:.3f}",
                    f"{r:.3f}",
                    f"{class_accuracy(classifier, fake, labels):.3f}",
                    f"{seconds:.0f} s",
                )
            )
        diff = (images[Precision.FP32] - images[Precision.BF16]).abs() * 127.5  # in levels of 255
        rows.append(
            (
                str(k),
                "|fp32 − bf16| per pixel",
                f"mean {diff.mean():.2f}",
                f"max {diff.max():.0f}",
                "",
                "",
                "",
            )
        )
    document = "\n\n".join(
        [
            "# fp32 vs bf16 torso on the CPU: quality",
            "Written by `python -m bench.precision_quality`: bundled `fmnist-small`, DDPM sampler "
            f"(learned σ), {args.num_samples} samples per point (balanced classes, the same seeds at both "
            "precisions), "
            "scored with the bundled classifier as `ddpm calibrate` does (FID against the 10,000 test "
            "images). Eager networks; the differences in the last row of each K are in levels of 255.",
            report.table(
                ["K", "precision", "FID", "precision", "recall", "class accuracy", "sampling"], rows
            ),
        ]
    )
    print(document)
    if args.out is not None:
        args.out.write_text(document + "\n")


if __name__ == "__main__":
    main()
