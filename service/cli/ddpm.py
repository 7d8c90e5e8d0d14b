"""`ddpm`: offline commands (convert, init, sample, presets). Errors end in one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from service.cli.quality_commands import add_train_classifier_parser, add_variance_fit_parser
from service.diffusion.config import VarianceType
from service.diffusion.respacing import RespacingError
from service.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS
from service.engine.errors import InvalidRequest
from service.model.checkpoint import WeightsError
from service.model.config import ConfigError
from service.model.manifest import ManifestError
from service.model.presets import PRESETS, UnknownPresetError, get_preset
from service.model.store import ModelStoreError, convert_checkpoint, load_model, random_model_dir
from service.quality.sampler_kinds import SAMPLER_KINDS

# Errors that are the user's to fix: reported as one line, never as a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ManifestError,
    WeightsError,
    ModelStoreError,
    ConfigError,
    UnknownPresetError,
    RespacingError,
    InvalidRequest,
    ValueError,
    FileNotFoundError,
)

VARIANCES = {
    "learned": VarianceType.LEARNED_RANGE,
    "fixed-small": VarianceType.FIXED_SMALL,
    "fixed-large": VarianceType.FIXED_LARGE,
    "analytic": VarianceType.ANALYTIC,  # needs the model's gamma.json (`ddpm gamma`)
}


def cmd_convert(args: argparse.Namespace) -> None:
    out = convert_checkpoint(Path(args.checkpoint), get_preset(args.preset), Path(args.out), name=args.name)
    print(f"wrote {out}/model.json and model.safetensors")


def cmd_init(args: argparse.Namespace) -> None:
    out = random_model_dir(get_preset(args.preset), Path(args.out), seed=args.seed, name=args.name)
    print(f"wrote randomly initialised {args.preset} to {out}")


def cmd_sample(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.engine.generation import GenerationSpec
    from service.engine.solo import plan, sample
    from service.images import grid, save_png, to_uint8

    model = load_model(Path(args.model), device=args.device)
    spec = GenerationSpec(
        model=model.name,
        class_label=args.class_label,
        steps=args.steps,
        num_images=args.num_images,
        seed=args.seed,
        sampler=args.sampler,
        eta=args.eta,
        variance=VARIANCES[args.variance] if args.variance else None,
    )
    process = plan(model, spec)  # errors surface here, before the progress bar starts
    with tqdm(
        total=process.num_timesteps, desc="sampling", unit="step", file=sys.stderr, disable=args.quiet
    ) as bar:
        images = sample(model, spec, on_iteration=lambda i, x: bar.update(1))
    save_png(grid(to_uint8(images), columns=args.columns), Path(args.out))
    print(f"wrote {args.out} ({args.num_images} images, K={args.steps}, seed {args.seed})")


def cmd_train(args: argparse.Namespace) -> None:
    from service.training.config import TrainConfig, resolve_bf16
    from service.training.trainer import saved_config, train

    saved = saved_config(Path(args.run_dir)) if args.resume else None
    config = TrainConfig(
        preset=args.preset,
        name=args.name or Path(args.out).name,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        seed=args.seed,
        objective=args.objective,
        bf16=resolve_bf16(args.precision, saved),
        checkpoint_every=args.checkpoint_every,
        data_dir=args.data_dir,
    )
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    run = train(
        config, Path(args.run_dir), export_dir=Path(args.out), resume=args.resume, progress=not args.quiet
    )
    print(f"trained {run.step} steps in {run.seconds / 60:.1f} min; EMA weights in {args.out}")


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_calibrate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.quality.calibrate import CalibrationPlan, calibrate
    from service.quality.classifier import load_classifier
    from service.quality.plots import plot_frontier, plot_tradeoff
    from service.quality.tradeoff import write_tradeoff

    plan = CalibrationPlan(
        steps=args.steps,
        samplers=tuple(s.strip() for s in args.samplers.split(",") if s.strip()),
        num_samples=args.num_samples,
        bpd_images=args.bpd_images,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    model = load_model(Path(args.model), device=args.device)
    classifier = load_classifier(Path(args.classifier), device=args.device)
    with tqdm(total=plan.work(), desc="calibrate", unit="eval", unit_scale=True, file=sys.stderr) as bar:

        def progress(phase: str, evaluations: int) -> None:
            bar.set_description(phase)
            bar.update(evaluations)

        tradeoff = calibrate(model, classifier, Path(args.classifier), plan, progress, args.data_dir)
    path = write_tradeoff(Path(args.model), tradeoff)
    plot_tradeoff(tradeoff, Path(args.plot))
    plot_frontier(tradeoff, Path(args.frontier_plot or Path(args.plot).with_name("frontier.png")))
    for p in tradeoff.points:
        print(
            f"{p.sampler:12} K={p.steps:<5} FID {p.fid:8.3f}  P {p.precision:.3f}  R {p.recall:.3f}  "
            f"acc {p.class_accuracy if p.class_accuracy is not None else float('nan'):.3f}  "
            f"bpd {p.bpd if p.bpd is not None else float('nan'):.3f}  {p.seconds_per_image * 1000:.1f} ms/img"
        )
    print(f"wrote {path} and {args.plot}")


def cmd_grid(args: argparse.Namespace) -> None:
    import torch

    from service.images import grid, save_png, to_uint8
    from service.quality.generate import generate
    from service.quality.sampler_kinds import sampler_kind

    model = load_model(Path(args.model), device=args.device)
    num_classes = model.manifest.num_classes or 1
    per_k = []
    for steps in args.steps:
        images, _, _ = generate(
            model, sampler_kind(args.sampler), steps, num_classes * args.per_class, args.seed
        )
        per_k.append(images)
        print(f"K={steps} done", file=sys.stderr)
    # rows: class c, image r; columns: K. Image i of every column uses the same seed and label.
    stacked = torch.stack(per_k, dim=1)  # [N, len(K), C, H, W]; image i has label i % num_classes
    order = [c + num_classes * r for c in range(num_classes) for r in range(args.per_class)]
    ordered = stacked[order].flatten(0, 1)
    save_png(grid(to_uint8(ordered), columns=len(args.steps)), Path(args.out))
    print(f"wrote {args.out}: rows = classes, columns = K {','.join(map(str, args.steps))}")


def cmd_tradeoff(args: argparse.Namespace) -> None:
    from service.quality.plots import plot_frontier, plot_tradeoff
    from service.quality.report import tradeoff_markdown
    from service.quality.tradeoff import Tradeoff, read_tradeoff, write_tradeoff

    def table(folder: str) -> Tradeoff:
        found = read_tradeoff(Path(folder))
        if found is None:
            raise ModelStoreError(f"{folder}: no tradeoff.json (run ddpm calibrate first)")
        return found

    sources = [table(folder) for folder in args.merge or ()]
    # Merging into a folder without a table starts it from the first source (a fresh model's calibration
    # run as several copies in parallel, one process per core).
    tradeoff = read_tradeoff(Path(args.model)) if sources else table(args.model)
    for source in sources:
        if tradeoff is None:
            tradeoff = source
        else:
            tradeoff.absorb(source)
    assert tradeoff is not None
    if sources:
        print(f"wrote {write_tradeoff(Path(args.model), tradeoff)}", file=sys.stderr)
    if args.plot:
        plot_tradeoff(tradeoff, Path(args.plot))
        plot_frontier(tradeoff, Path(args.plot).with_name("frontier.png"))
    print(tradeoff_markdown(tradeoff), end="")


def cmd_gamma(args: argparse.Namespace) -> None:
    import time

    import numpy as np
    from tqdm import tqdm

    from service.data.fashion_mnist import load_split, to_model_space
    from service.model.gamma_table import GAMMA_FILE, GammaTableError, read_gamma, write_gamma
    from service.model.manifest import read_manifest
    from service.quality.gamma import eps_norm_samples, grid_timesteps, standard_errors, table_from_norms

    if args.grid < 2 or args.samples_per_step < 1 or args.batch_size < 1:
        raise ValueError("--grid must be >= 2, --samples-per-step and --batch-size >= 1")
    folder = Path(args.model)
    if (folder / GAMMA_FILE).is_file():  # a broken table would stop load_model: say how to get past it
        try:
            read_gamma(folder, read_manifest(folder).diffusion.num_timesteps)
        except GammaTableError as e:
            raise ModelStoreError(f"{e}; remove it to estimate a new one") from None
    started = time.perf_counter()
    model = load_model(folder, device=args.device)
    manifest = model.manifest
    if (manifest.image_size, manifest.image_channels) != (28, 1):
        raise ValueError(
            f"{args.model}: Gamma is estimated on Fashion-MNIST (28x28x1), the only data set packaged here; "
            f"this model makes {manifest.image_size}x{manifest.image_size}x{manifest.image_channels} images"
        )
    images, labels = load_split(args.split, args.data_dir)
    num_timesteps = manifest.diffusion.num_timesteps
    timesteps = grid_timesteps(num_timesteps, args.grid)
    with tqdm(
        total=len(timesteps) * args.samples_per_step,
        desc="Gamma",
        unit="eval",
        unit_scale=True,
        file=sys.stderr,
        disable=args.quiet,
    ) as bar:
        norms = eps_norm_samples(
            model,
            to_model_space(images),
            labels,
            timesteps,
            args.samples_per_step,
            args.seed,
            args.batch_size,
            lambda phase, n: bar.update(n),
        )
    data = f"Fashion-MNIST {args.split} split ({len(images)} images)"
    table = table_from_norms(model, timesteps, norms, args.seed, data)
    path = write_gamma(folder, table)
    seconds = time.perf_counter() - started
    gamma = np.asarray(table.gamma)
    low, high = int(gamma.argmin()), int(gamma.argmax())
    print(
        f"wrote {path}: Gamma at {len(timesteps)} of T={num_timesteps} steps, "
        f"{args.samples_per_step} samples each, seed {args.seed}, {data}"
    )
    print(
        f"Gamma from {gamma[low]:.5f} (t={timesteps[low]}) to {gamma[high]:.5f} (t={timesteps[high]}); "
        f"Gamma(0) = {gamma[0]:.5f}, Gamma(T-1) = {gamma[-1]:.5f}"
    )
    if args.samples_per_step >= 2:
        errors = standard_errors(norms)
        worst = int(errors.argmax())
        print(
            f"Monte Carlo standard error of Gamma: median {np.median(errors):.2e}, "
            f"max {errors[worst]:.2e} (t={timesteps[worst]})"
        )
    print(f"took {seconds:.1f} s ({norms.size} network evaluations)")


def cmd_presets(args: argparse.Namespace) -> None:
    for name, preset in sorted(PRESETS.items()):
        print(f"{name:34} {preset.repo:18} {preset.unet.kind:10} {preset.title}")


def steps_arg(text: str) -> int | str:
    """K as an integer, or a respacing string such as "ddim50" or "10,15,20"."""
    return int(text) if text.strip().isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a released .pt checkpoint into a model_store folder")
    p.add_argument("checkpoint", help="path to the .pt file (read with weights_only=True)")
    p.add_argument("--preset", required=True, help="architecture preset (see `ddpm presets`)")
    p.add_argument("--out", required=True, help="output folder, e.g. model_store/NAME/")
    p.add_argument("--name", help="model name in the manifest (default: the preset name)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("init", help="write a randomly initialised model folder for a preset")
    p.add_argument("--preset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("sample", help="sample images from a model folder into a PNG grid")
    p.add_argument("--model", required=True, help="model folder holding model.json")
    p.add_argument("--class-label", type=int, default=None)
    p.add_argument("--steps", type=steps_arg, required=True, help="K (e.g. 50) or a respacing like ddim50")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    samplers = "; ".join(f"{s.name}: {s.description}" for s in SAMPLERS.values())
    p.add_argument("--sampler", choices=list(SAMPLERS), default=DEFAULT_SAMPLER, help=samplers)
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0 = deterministic)")
    p.add_argument("--variance", choices=sorted(VARIANCES), help="override the model's variance")
    p.add_argument("--columns", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train a class-conditional model on Fashion-MNIST (paper recipe)")
    p.add_argument("--preset", default="fmnist-small", help="architecture preset")
    p.add_argument("--out", default="model_store/fmnist-small", help="model folder for the EMA weights")
    p.add_argument("--run-dir", default="runs/fmnist-small", help="checkpoints for --resume")
    p.add_argument("--name", help="model name (default: the --out folder name)")
    p.add_argument("--steps", type=int, default=20_000, help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objective",
        choices=["hybrid", "vlb"],
        default="hybrid",
        help="hybrid: L_simple + 0.001 L_vlb; vlb: L_vlb with loss-second-moment importance sampling",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast or fp32; auto: a resumed run's own, else bf16 where the CPU has it natively "
        "(AMX/AVX512-BF16) and fp32 where bf16 is emulated (several times slower there)",
    )
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: every core; bench/train_speed.py measures 1 vs 2)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="measure FID/precision/recall/accuracy/bpd per sampler and K")
    p.add_argument("--model", required=True, help="model folder; tradeoff.json is written there")
    p.add_argument("--steps", type=int_list, default=(10, 25, 50, 100, 250))
    p.add_argument("--samplers", default="ddpm", help=f"comma-separated: {', '.join(SAMPLER_KINDS)}")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--bpd-images", type=int, default=0, help="test images for bits/dim (ddpm only)")
    p.add_argument("--classifier", default="model_store/fmnist-classifier")
    p.add_argument("--plot", default="docs/tradeoff.png")
    p.add_argument(
        "--frontier-plot", help="FID vs ms/image per sampler (default: frontier.png beside --plot)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("grid", help="sample grid: one row per class, one column per K, same seeds")
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int_list, default=(10, 25, 50, 100, 250, 1000))
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="docs/samples.png")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("tradeoff", help="print a model's tradeoff.json as a markdown table")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--merge",
        action="append",
        metavar="FOLDER",
        help="merge FOLDER's tradeoff.json into --model's first (repeatable; the larger sample count stays)",
    )
    p.add_argument("--plot", help="also draw the table's FID/latency plot here, and frontier.png beside it")
    p.set_defaults(func=cmd_tradeoff)

    p = sub.add_parser("gamma", help="estimate Gamma_t for variance=analytic; writes gamma.json")
    p.add_argument("--model", required=True, help="model folder; gamma.json is written there")
    p.add_argument(
        "--grid", type=int, default=256, help="training steps estimated, evenly spaced over 0..T-1"
    )
    p.add_argument("--samples-per-step", type=int, default=64, help="(image, noise) draws per grid step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--split", choices=["train", "test"], default="train", help="Fashion-MNIST split for x0")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST idx .gz files")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_gamma)

    add_train_classifier_parser(sub)
    add_variance_fit_parser(sub)

    p = sub.add_parser("presets", help="list the architecture presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except USER_ERRORS as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
