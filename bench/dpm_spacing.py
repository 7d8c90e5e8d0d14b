"""Which timesteps DPM-Solver++(2M) should take on the bundled model: time-uniform or logSNR-uniform.

    python -m bench.dpm_spacing --steps 10 25 --num-samples 500

Both spacings run the registered `dpm++2m` step on the same seeds and labels; FID against the test split
in the calibration classifier's features, as `ddpm calibrate` scores every point. The winner is the
registry's default (service.diffusion.multistep.DEFAULT_SPACING); docs/quality.md has the table.
"""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from pathlib import Path

from service.data.fashion_mnist import load_split, to_model_space
from service.diffusion.multistep import SPACINGS, dpm_solver_process, dpm_solver_timesteps
from service.diffusion.samplers import SAMPLERS
from service.model.store import load_model
from service.quality.classifier import load_classifier
from service.quality.generate import generate
from service.quality.metrics import extract_features, frechet_distance
from service.quality.sampler_kinds import SAMPLER_KINDS

BUNDLED = Path(__file__).resolve().parent.parent / "model_store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(BUNDLED / "fmnist-small")
    classifier = load_classifier(BUNDLED / "fmnist-classifier")
    real = extract_features(classifier, to_model_space(load_split("test")[0]))
    base = SAMPLERS["dpm++2m"]
    print(f"| K | spacing | FID ({args.num_samples} samples) | first timesteps evaluated |")
    print("|---:|---|---:|---|")
    for steps in args.steps:
        for spacing in SPACINGS:
            # A registry entry of this process only: the same step on this spacing's timesteps.
            name = f"dpm++2m-{spacing}"
            SAMPLERS[name] = dataclasses.replace(
                base, name=name, schedule=partial(dpm_solver_process, spacing=spacing), schedule_name=name
            )
            kind = dataclasses.replace(SAMPLER_KINDS["dpm++2m"], name=name, sampler=name)
            images, _, _ = generate(model, kind, steps, args.num_samples, args.seed)
            fid = frechet_distance(real, extract_features(classifier, images))
            timesteps = dpm_solver_timesteps(model.manifest.diffusion, steps, spacing)[::-1]
            first = ", ".join(map(str, timesteps[:4]))
            print(f"| {steps} | {spacing} | {fid:.2f} | {first} ... {timesteps[-1]} |", flush=True)


if __name__ == "__main__":
    main()
