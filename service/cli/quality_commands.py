"""`ddpm train-classifier` (the Fashion-MNIST feature extractor that FID and class accuracy use) and
`ddpm variance-fit` (the learned variance head against the KL-optimal variance, step by step)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.quality import train_classifier as training

if TYPE_CHECKING:  # the heavy imports stay inside the commands, so `ddpm --help` is quick
    from service.model.store import LoadedModel
    from service.quality.variance_fit import StepFit


def cmd_train_classifier(args: argparse.Namespace) -> None:
    info = training.train_classifier(
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    print(
        f"test accuracy {info['test_accuracy']:.2%} on {info['test_images']} images, "
        f"wall time {info['wall_time_s'] / 60:.1f} min; wrote {args.out}"
    )


def add_train_classifier_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `train-classifier` on a parser's subparsers (the object add_subparsers returned)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train-classifier", help="train the Fashion-MNIST classifier used as the FID feature space"
    )
    p.add_argument("--out", default="model_store/fmnist-classifier", help="folder for the weights + record")
    p.add_argument("--epochs", type=int, default=training.DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=training.DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=float, default=training.DEFAULT_LR, help="peak of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_classifier)
    return p


def cmd_variance_fit(args: argparse.Namespace) -> None:
    import torch

    from service.data.fashion_mnist import load_split, to_model_space
    from service.diffusion.process import spaced_process
    from service.model.store import load_model
    from service.quality.variance_fit import evenly_spaced_steps, variance_fit

    if args.num_images < 1 or args.rows < 2:
        raise ValueError("--num-images must be >= 1 and --rows >= 2")
    score_steps = _step_list(args.score_optimal_head) if args.score_optimal_head else []
    refit_ok = args.refit_samples >= 0 and args.refit_rounds >= 1
    if score_steps and not (args.num_samples >= 10 and args.fit_rows >= 2 and refit_ok):
        raise ValueError(
            "--num-samples must be >= 10, --fit-rows >= 2, --refit-samples >= 0 and --refit-rounds >= 1 "
            "for --score-optimal-head"
        )
    if score_steps and len(args.model) > 1:
        raise ValueError("--score-optimal-head scores one model: give a single --model")
    torch.set_num_threads(args.threads)
    models = [_fittable_model(load_model(Path(path)), path) for path in args.model]
    images, labels = load_split("test", args.data_dir)
    x_start = to_model_space(images[: args.num_images])
    fits_by_label: dict[str, list[StepFit]] = {}
    for model, label in zip(models, _labels(models), strict=True):
        y = labels[: args.num_images] if model.manifest.num_classes else None
        process = spaced_process(model.manifest.diffusion, args.steps)
        steps = evenly_spaced_steps(process.num_timesteps, args.rows)
        # One generator per model, seeded alike: every model sees the same x_t at each step.
        generator = torch.Generator().manual_seed(args.seed)
        fits = variance_fit(model.denoiser, process, x_start, y, generator, steps)
        fits_by_label[label] = fits
        print(f"{label}, K={args.steps}, {len(x_start)} test images: frac = weight of log beta in log Sigma")
        print("| k | t | head frac | KL-optimal frac |\n|---:|---:|---:|---:|")
        for fit in fits:
            print(f"| {fit.step} | {fit.timestep} | {fit.head_frac:.3f} | {fit.optimal_frac:.3f} |")
        gap = sum(abs(f.head_frac - f.optimal_frac) for f in fits) / len(fits)
        print(f"\nmean |head - optimal| over these steps: {gap:.3f}\n")
    if args.plot:
        from service.quality.plots import plot_variance_fit

        title = f"variance head vs KL-optimal, K={args.steps}, {len(x_start)} test images"
        if len(models) == 1:  # several models are named by the legend; a title naming them all is cut off
            title = f"{models[0].name}: {title}"
        print(f"wrote {plot_variance_fit(fits_by_label, title, Path(args.plot))}")
    if score_steps:  # one model (checked above): its generator goes on from its fit, as it always has
        model = models[0]
        y = labels[: args.num_images] if model.manifest.num_classes else None
        full = spaced_process(model.manifest.diffusion)
        rows = evenly_spaced_steps(full.num_timesteps, args.fit_rows)
        full_fits = variance_fit(model.denoiser, full, x_start, y, generator, rows)
        score_optimal_head(model, full_fits, score_steps, args)


def _fittable_model(model: LoadedModel, path: str) -> LoadedModel:
    if (model.manifest.image_size, model.manifest.image_channels) != (28, 1):
        raise ValueError(
            f"{path}: variance-fit scores on Fashion-MNIST test images (28x28x1), the only data set "
            f"packaged here; this model makes {model.manifest.image_size}x{model.manifest.image_size}x"
            f"{model.manifest.image_channels} images"
        )
    if not model.manifest.diffusion.learn_sigma:
        raise ValueError(f"{path}: the model has fixed variances; there is no head to fit")
    return model


def _labels(models: Sequence[LoadedModel]) -> list[str]:
    """Each model's name, with its training steps where `ddpm train` recorded them (two checkpoints of
    one run share a name); the folder's path where that still leaves two alike."""
    labels = []
    for model in models:
        steps = model.manifest.source.get("steps")
        labels.append(model.name if steps is None else f"{model.name} @ {int(steps):,} steps")
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({model.path})" for label, model in zip(labels, models, strict=True)]
    return labels


def _step_list(text: str) -> list[int]:
    try:
        steps = [int(k) for k in text.split(",")]
    except ValueError:
        raise ValueError(f"--score-optimal-head takes step counts like 10,25,50, got {text!r}") from None
    if min(steps) < 1:
        raise ValueError("--score-optimal-head step counts must be >= 1")
    return steps


COMPARED = ("ddpm", "fixed-small", "fixed-large")  # tradeoff.json rows printed beside the replaced heads
COLUMNS = ("trained head", "fixed-small", "fixed-large")


def score_optimal_head(
    model: LoadedModel, fits: Sequence[StepFit], steps: list[int], args: argparse.Namespace
) -> None:
    """DDPM with the head replaced by frac*(t) of the T-step process (and, with --refit-samples, with the
    head refit to its L_vlb minimum), scored like `ddpm calibrate`."""
    import json
    from dataclasses import asdict

    import torch

    from service.data.fashion_mnist import load_split, to_model_space
    from service.quality.calibrate import CalibrationPlan, score_point
    from service.quality.classifier import load_classifier
    from service.quality.head_refit import refit_head
    from service.quality.metrics import extract_features
    from service.quality.optimal_head import with_optimal_head
    from service.quality.tradeoff import read_tradeoff

    plan = CalibrationPlan(steps=tuple(steps), samplers=("ddpm",), num_samples=args.num_samples)
    classifier = load_classifier(args.classifier)
    real = extract_features(classifier, to_model_space(load_split("test", args.data_dir)[0]))
    heads = {"KL-optimal": with_optimal_head(model, fits)}
    record: dict[str, Any] = {"fit_images": args.num_images, "fits": [asdict(f) for f in fits]}
    if args.refit_samples:
        images, labels = load_split("train", args.data_dir)
        y = torch.as_tensor(labels).long() if model.manifest.num_classes else None
        generator = torch.Generator().manual_seed(args.seed)
        heads["refit"], refit = refit_head(
            model, to_model_space(images), y, args.refit_samples, generator, rounds=args.refit_rounds
        )
        record["refit"] = asdict(refit)
        print(
            f"\nrefit head: mean L_t over {refit.samples} (x0, t) samples {refit.loss_before:.6f} -> "
            f"{refit.loss_after:.6f} bits/dim"
        )
    table = read_tradeoff(model.path)
    measured = {} if table is None else {(p.sampler, p.steps, p.num_samples): p.fid for p in table.points}
    print(
        "\nDDPM with the head replaced: KL-optimal = the T-step KL-optimal weight "
        f"({len(fits)} fitted steps); "
        f"refit = the head's weights at their L_vlb minimum. {args.num_samples} samples, seed {plan.seed}; "
        "the last three columns are tradeoff.json's FIDs at the same count"
    )
    print("| head | K | FID | precision | recall | class accuracy | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    points = []
    for name, head in heads.items():
        for k in steps:
            p = score_point(head, classifier, real, plan, "ddpm", k, lambda phase, n: None)
            points.append(asdict(p) | {"sampler": f"ddpm, {name} head"})
            others = [measured.get((sampler, k, args.num_samples)) for sampler in COMPARED]
            cells = " | ".join("–" if fid is None else f"{fid:.2f}" for fid in others)
            accuracy = float("nan") if p.class_accuracy is None else p.class_accuracy
            scores = f"{p.fid:.2f} | {p.precision:.3f} | {p.recall:.3f} | {accuracy:.3f}"
            print(f"| {name} | {k} | {scores} | {cells} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(record | {"points": points}, indent=1) + "\n")
        print(f"wrote {args.out}")


def add_variance_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "variance-fit", help="learned variance head vs the KL-optimal variance per step, on test images"
    )
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="model folder; repeat to compare models on the same images, noise and steps in one plot",
    )
    p.add_argument("--steps", default="50", help="K (or any respacing) of the process to check")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--rows", type=int, default=12, help="how many steps to report, evenly spaced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", help="also draw the two weights against t into this PNG")
    p.add_argument(
        "--score-optimal-head",
        metavar="K,K,...",
        help="also sample DDPM at these K with the head replaced by the KL-optimal weight of the T-step "
        "process (what L_vlb would teach it) and score FID etc. as calibrate does",
    )
    p.add_argument(
        "--refit-samples",
        type=int,
        default=0,
        help="also refit the head's own weights to their L_vlb minimum (trunk frozen) on this many "
        "(training image, t, noise) triples, t spread evenly over the T steps, and score that head too; "
        "0 skips it",
    )
    p.add_argument("--refit-rounds", type=int, default=4, help="L-BFGS rounds of 20 iterations in the refit")
    p.add_argument("--fit-rows", type=int, default=120, help="T-step process steps fitted for that weight")
    p.add_argument("--num-samples", type=int, default=500, help="samples per K for --score-optimal-head")
    p.add_argument("--classifier", default="model_store/fmnist-classifier", help="feature extractor")
    p.add_argument("--out", help="write the fitted weights and scores of --score-optimal-head as JSON")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.set_defaults(func=cmd_variance_fit)
    return p
