"""`ddpm train-classifier`: the Fashion-MNIST feature extractor that FID and class accuracy use."""

from __future__ import annotations

import argparse
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
