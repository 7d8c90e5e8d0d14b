"""`ddpm`: offline commands (convert, init, sample, presets). Errors end in one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from service.diffusion.config import VarianceType
from service.diffusion.respacing import RespacingError
from service.diffusion.sampling import Sampler
from service.model.checkpoint import WeightsError
from service.model.config import ConfigError
from service.model.manifest import ManifestError
from service.model.presets import PRESETS, UnknownPresetError, get_preset
from service.model.store import ModelStoreError, convert_checkpoint, load_model, random_model_dir

# Errors that are the user's to fix: reported as one line, never as a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ManifestError,
    WeightsError,
    ModelStoreError,
    ConfigError,
    UnknownPresetError,
    RespacingError,
    ValueError,
    FileNotFoundError,
)

VARIANCES = {
    "learned": VarianceType.LEARNED_RANGE,
    "fixed-small": VarianceType.FIXED_SMALL,
    "fixed-large": VarianceType.FIXED_LARGE,
}


def cmd_convert(args: argparse.Namespace) -> None:
    out = convert_checkpoint(Path(args.checkpoint), get_preset(args.preset), Path(args.out), name=args.name)
    print(f"wrote {out}/model.json and model.safetensors")


def cmd_init(args: argparse.Namespace) -> None:
    out = random_model_dir(get_preset(args.preset), Path(args.out), seed=args.seed, name=args.name)
    print(f"wrote randomly initialised {args.preset} to {out}")


def cmd_sample(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.engine.solo import SampleSpec, plan, sample
    from service.images import grid, save_png, to_uint8

    model = load_model(Path(args.model), device=args.device)
    spec = SampleSpec(
        class_label=args.class_label,
        steps=args.steps,
        num_images=args.num_images,
        seed=args.seed,
        sampler=Sampler(args.sampler),
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
    p.add_argument("--sampler", choices=[s.value for s in Sampler], default="ddpm")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--variance", choices=sorted(VARIANCES), help="override the model's variance")
    p.add_argument("--columns", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

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
