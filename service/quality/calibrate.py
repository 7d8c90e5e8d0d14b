"""`ddpm calibrate`: sample each (sampler, K), score the samples, write tradeoff.json and the plot."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from service.data.fashion_mnist import load_split, to_model_space
from service.model.gamma_table import MAKE_COMMAND
from service.model.store import LoadedModel
from service.quality.classifier import FashionClassifier, read_info
from service.quality.generate import generate
from service.quality.likelihood import test_bpd
from service.quality.metrics import class_accuracy, extract_features, frechet_distance, precision_recall
from service.quality.sampler_kinds import sampler_kind
from service.quality.tradeoff import Tradeoff, TradeoffPoint, read_tradeoff

Progress = Callable[[str, int], None]  # (phase description, images done in this update)


@dataclass(frozen=True)
class CalibrationPlan:
    steps: tuple[int, ...]
    samplers: tuple[str, ...]
    num_samples: int
    bpd_images: int = 0  # test images for bits/dim (learned-variance DDPM only); 0 skips it
    seed: int = 0
    batch_size: int = 250

    def __post_init__(self) -> None:
        for name in self.samplers:
            sampler_kind(name)
        if self.num_samples < 10:
            raise ValueError(
                f"--num-samples must be >= 10 for FID and precision/recall, got {self.num_samples}"
            )
        if not self.steps or min(self.steps) < 1:
            raise ValueError("--steps must list step counts >= 1")

    def work(self) -> int:
        """UNet evaluations (image-steps) the plan costs, for the progress bar."""
        sampling = sum(self.steps) * self.num_samples * len(self.samplers)
        return sampling + (sum(self.steps) * self.bpd_images if "ddpm" in self.samplers else 0)


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def real_vs_real_fid(classifier: FashionClassifier, count: int, data_dir: str | None) -> float:
    """FID of train images vs test images at `count` samples: the floor no model can beat at that size."""
    train_images, _ = load_split("train", data_dir)
    real = extract_features(classifier, to_model_space(load_split("test", data_dir)[0]))
    other = extract_features(classifier, to_model_space(train_images[:count]))
    return frechet_distance(real, other)


def score_point(
    model: LoadedModel,
    classifier: FashionClassifier,
    real_features: torch.Tensor,
    plan: CalibrationPlan,
    sampler: str,
    steps: int,
    progress: Progress,
) -> TradeoffPoint:
    kind = sampler_kind(sampler)
    images, labels, seconds = generate(
        model,
        kind,
        steps,
        plan.num_samples,
        plan.seed,
        plan.batch_size,
        on_batch=lambda n: progress(f"{sampler} K={steps}", n * steps),
    )
    fake = extract_features(classifier, images)
    # Precision/recall compare k-NN radii, which shrink as a set grows: use equally many real images.
    precision, recall = precision_recall(real_features[: len(fake)], fake, k=3)
    accuracy = class_accuracy(classifier, images, labels) if model.manifest.num_classes else None
    return TradeoffPoint(
        sampler=sampler,
        steps=steps,
        num_samples=plan.num_samples,
        fid=frechet_distance(real_features, fake),
        precision=precision,
        recall=recall,
        class_accuracy=accuracy,
        seconds_per_image=seconds,
    )


def bits_per_dim(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: CalibrationPlan,
    steps: int,
    progress: Progress,
) -> float:
    def report(n: int) -> None:
        progress(f"bpd K={steps}", n * steps)

    conditional = model.manifest.num_classes is not None
    count = plan.bpd_images
    return test_bpd(
        model,
        images[:count],
        labels[:count] if conditional else None,
        steps,
        plan.seed,
        plan.batch_size,
        report,
    )


def calibrate(
    model: LoadedModel,
    classifier: FashionClassifier,
    classifier_dir: Path,
    plan: CalibrationPlan,
    progress: Progress,
    data_dir: str | None = None,
) -> Tradeoff:
    """Run the plan; points are merged into the model's existing table (same (sampler, K) replaced)."""
    for name in plan.samplers:
        if sampler_kind(name).needs_gamma and model.gamma is None:
            raise ValueError(f"--samplers {name} needs the model's Gamma table: run `{MAKE_COMMAND}` first")
    test_images, test_labels = load_split("test", data_dir)
    real_images = to_model_space(test_images)
    real_features = extract_features(classifier, real_images)
    info = read_info(classifier_dir)
    tradeoff = read_tradeoff(model.path) or Tradeoff(
        model=model.name,
        machine=machine_name(),
        feature_extractor=(
            f"{classifier_dir.name} penultimate layer ({classifier.num_features}-d), "
            f"test accuracy {info.get('test_accuracy', float('nan')):.4f}"
        ),
        reference_set=f"Fashion-MNIST test split ({len(real_images)} images)",
    )
    tradeoff.machine = machine_name()
    tradeoff.set_real_vs_real(plan.num_samples, real_vs_real_fid(classifier, plan.num_samples, data_dir))
    points = []
    for sampler in plan.samplers:
        for steps in plan.steps:
            point = score_point(model, classifier, real_features, plan, sampler, steps, progress)
            if sampler == "ddpm" and plan.bpd_images:
                point.bpd = bits_per_dim(model, real_images, test_labels, plan, steps, progress)
                point.bpd_images = plan.bpd_images
            points.append(point)
    tradeoff.merge(points)
    return tradeoff
