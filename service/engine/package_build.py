"""Child process: build one AOTInductor package of a model's network at one batch size (see packages.py).

    python -m service.engine.package_build --model DIR --precision fp32 --threads 2 --batch 16 --out F.pt2

Runs at a lower priority than the server that started it, and writes the package atomically (a
temporary name, then a rename), so a server never loads half a file and two servers building the same
size do not corrupt each other's result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch

from service.engine.compile import torso_dtype
from service.engine.settings import Precision
from service.model.store import load_model

NICE_INCREMENT = 10


def build(model_dir: Path, precision: Precision, threads: int, batch: int, out: Path) -> None:
    torch.set_num_threads(threads)  # the generated kernels keep the thread count they were built with
    model = load_model(model_dir)
    net = model.net
    dtype = torso_dtype(precision, torch.device("cpu"))
    if dtype != torch.float32:
        net.convert_torso_to(dtype)  # type: ignore[operator]
    manifest = model.manifest
    generator = torch.Generator().manual_seed(batch)
    shape = (batch, manifest.image_channels, manifest.image_size, manifest.image_size)
    x_t = torch.randn(shape, generator=generator)
    model_t = torch.rand((batch,), generator=generator) * manifest.diffusion.num_timesteps
    args: tuple[torch.Tensor, ...] = (x_t, model_t)
    if manifest.num_classes is not None:
        args += (torch.randint(0, manifest.num_classes, (batch,), generator=generator),)
    with torch.no_grad():
        program = torch.export.export(net, args)
    partial = out.with_name(f"{out.stem}.{os.getpid()}.partial{out.suffix}")  # AOTInductor wants .pt2
    torch._inductor.aoti_compile_and_package(
        program,
        package_path=str(partial),
        # The server passes its own weights to the loaded package: no second copy on disk or in memory.
        inductor_configs={"aot_inductor.package_constants_in_so": False},
    )
    os.replace(partial, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.AUTO)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with contextlib.suppress(AttributeError, OSError):  # not on every platform; best effort
        os.nice(NICE_INCREMENT)
    build(args.model, args.precision, args.threads, args.batch, args.out)


if __name__ == "__main__":
    main()
