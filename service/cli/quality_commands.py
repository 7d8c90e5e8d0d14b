"""`ddpm train-classifier` (the Fashion-MNIST feature extractor that FID and class accuracy use) and
`ddpm variance-fit` (the learned variance head against the KL-optimal variance, step by step)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.quality import train_classifier as training


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
    torch.set_num_threads(args.threads)
    model = load_model(Path(args.model))
    if (model.manifest.image_size, model.manifest.image_channels) != (28, 1):
        raise ValueError(
            f"{args.model}: variance-fit scores on Fashion-MNIST test images (28x28x1), the only data set "
            f"packaged here; this model makes {model.manifest.image_size}x{model.manifest.image_size}x"
            f"{model.manifest.image_channels} images"
        )
    if not model.manifest.diffusion.learn_sigma:
        raise ValueError(f"{args.model}: the model has fixed variances; there is no head to fit")
    images, labels = load_split("test", args.data_dir)
    x_start = to_model_space(images[: args.num_images])
    y = labels[: args.num_images] if model.manifest.num_classes else None
    process = spaced_process(model.manifest.diffusion, args.steps)
    steps = evenly_spaced_steps(process.num_timesteps, args.rows)
    generator = torch.Generator().manual_seed(args.seed)
    fits = variance_fit(model.denoiser, process, x_start, y, generator, steps)
    print(f"{model.name}, K={args.steps}, {len(x_start)} test images: frac = weight of log beta in log Sigma")
    print("| k | t | head frac | KL-optimal frac |\n|---:|---:|---:|---:|")
    for fit in fits:
        print(f"| {fit.step} | {fit.timestep} | {fit.head_frac:.3f} | {fit.optimal_frac:.3f} |")
    gap = sum(abs(f.head_frac - f.optimal_frac) for f in fits) / len(fits)
    print(f"\nmean |head - optimal| over these steps: {gap:.3f}")
    if args.plot:
        from service.quality.plots import plot_variance_fit

        title = f"{model.name}: variance head vs KL-optimal, K={args.steps}, {len(x_start)} test images"
        print(f"wrote {plot_variance_fit(fits, title, Path(args.plot))}")


def add_variance_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "variance-fit", help="learned variance head vs the KL-optimal variance per step, on test images"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--steps", default="50", help="K (or any respacing) of the process to check")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--rows", type=int, default=12, help="how many steps to report, evenly spaced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", help="also draw the two weights against t into this PNG")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.set_defaults(func=cmd_variance_fit)
    return p
