"""Compiled CPU networks as AOTInductor packages: one per batch size, built in a child process, cached.

Why not torch.compile in the serving process: compiling there holds the GIL for most of a minute per
batch size (dynamo tracing, lowering), and the engine thread needs the GIL to dispatch every op: measured
on the development machine, an idle K=50 request took 5.4-6.0 s while the server compiled instead of
1.16 s. An ahead-of-time package (torch.export + AOTInductor) is built by `python -m
service.engine.package_build` in a child process at a lower priority, written to a cache folder, and
loaded here in milliseconds; the loaded runner is plain C++ with no guards and no recompilation. The
cache key covers everything the generated code depends on (weights, manifest, precision, thread count,
batch size, torch and Python versions, the CPU's model and flags), so a restart finds every size built.

The weights are not copied into the packages (package_constants_in_so=False): each loaded package uses
the serving network's own tensors (user-managed constants), so eleven batch sizes cost no more memory
than one network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from service.diffusion.sampling import Denoiser
from service.model.denoiser import EpsVDenoiser
from service.model.manifest import MANIFEST_FILE
from service.model.store import LoadedModel

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 3600.0  # a cold build is about a minute per size on 2 cores; a hung compiler is cut off
PACKAGE_SUFFIX = ".pt2"


class PackageError(RuntimeError):
    """A package could not be built or loaded; the engine keeps serving that size eager."""


@dataclass(frozen=True)
class PackageSpec:
    """What a package is built from: a model folder run at one precision and thread count."""

    model_dir: Path
    precision: str
    threads: int

    def key(self, batch: int, model_digest: str) -> str:
        facts = {
            "model": model_digest,
            "precision": self.precision,
            "threads": self.threads,
            "batch": batch,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": _cpu_identity(),
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


class PackageBuilder:
    """Builds (in a child process) or finds the package of each batch size, and loads it."""

    def __init__(self, model: LoadedModel, spec: PackageSpec, cache_dir: Path) -> None:
        self.model = model
        self.spec = spec
        self.cache_dir = cache_dir
        self._digest: str | None = None
        self._child: subprocess.Popen[str] | None = None
        self._cancelled = False

    def path(self, batch: int) -> Path:
        if self._digest is None:
            self._digest = model_digest(self.spec.model_dir, self.model.manifest.weights)
        return self.cache_dir / f"b{batch}-{self.spec.key(batch, self._digest)}{PACKAGE_SUFFIX}"

    def cached(self, size: int) -> bool:
        return self.path(size).is_file()

    def __call__(self, size: int) -> Denoiser:
        """The compiled denoiser at `size` rows: from the cache, or built first (blocking, minutes)."""
        path = self.path(size)
        if not path.is_file():
            self.build(size, path)
        return load_package(path, self.model)

    def build(self, batch: int, path: Path) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "service.engine.package_build",
            "--model",
            str(self.spec.model_dir),
            "--precision",
            self.spec.precision,
            "--threads",
            str(self.spec.threads),
            "--batch",
            str(batch),
            "--out",
            str(path),
        ]
        log.info("building the compiled network for batch %d in a child process", batch)
        if self._cancelled:
            raise PackageError("cancelled")
        self._child = child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _, stderr = child.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            child.kill()
            child.communicate()
            raise PackageError(f"building batch {batch} took over {BUILD_TIMEOUT_S:.0f} s") from e
        finally:
            self._child = None
        if self._cancelled:
            raise PackageError("cancelled")
        if child.returncode != 0 or not path.is_file():
            raise PackageError(f"building batch {batch} failed ({child.returncode}): {stderr[-2000:]}")

    def cancel(self) -> None:
        """Kill the build under way, if any (the engine is stopping); later builds are refused."""
        self._cancelled = True
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()


def load_package(path: Path, model: LoadedModel) -> Denoiser:
    """A Denoiser over the package at `path`, sharing `model.net`'s weights."""
    try:
        runner = torch._inductor.aoti_load_package(str(path))
        weights = model.net.state_dict()
        wanted = list(runner.get_constant_fqns())
        missing = [name for name in wanted if name not in weights]
        if missing:
            raise PackageError(f"{path.name}: the network has no tensors named {missing[:5]}")
        constants = {name: weights[name] for name in wanted}
        runner.load_constants(constants, check_full_update=True, user_managed=True)
    except PackageError:
        raise
    except Exception as e:  # a corrupt or foreign file in the cache
        raise PackageError(f"{path}: {type(e).__name__}: {e}") from e
    manifest = model.manifest
    return EpsVDenoiser(
        _PackagedNet(runner),  # type: ignore[arg-type]  # called like the network, not an nn.Module
        learn_sigma=manifest.diffusion.learn_sigma,
        class_conditional=manifest.num_classes is not None,
    )


class _PackagedNet:
    """Calls a package like the network: net(x, t, y); unconditional packages take no labels."""

    def __init__(self, runner: object) -> None:
        self.runner = runner

    def __call__(self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        run = self.runner
        out = run(x_t, model_t) if y is None else run(x_t, model_t, y)  # type: ignore[operator]
        return out[0] if isinstance(out, list | tuple) else out


def model_digest(model_dir: Path, weights_file: str) -> str:
    """SHA-256 over the manifest and the weights files' bytes."""
    digest = hashlib.sha256()
    for name in (MANIFEST_FILE, weights_file):
        with (Path(model_dir) / name).open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _cpu_identity() -> str:
    """The CPU's model name and flags: inductor generates code for the CPU it runs on (-march=native)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
        return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    return f"{platform.machine()} {platform.processor()}"
