"""The network as a user could configure it: thread count × compiled or eager × precision.

The machine's ceiling is the best raw throughput over these settings, not the configuration a benchmark
happened to pick. Compiled means the AOTInductor package the server itself builds and serves on the CPU
(service.engine.packages), from the same cache folder, so a package built here is the one the server
loads (and the other way round). bf16 is measured only where the CPU has native bf16 instructions.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from service.engine.compile import native_bf16, torso_dtype
from service.engine.executor import compile_cache_dir
from service.engine.packages import PackageBuilder, PackageSpec
from service.engine.settings import EngineSettings, Precision
from service.engine.threads import machine_threads
from service.model.store import LoadedModel, load_model


@dataclass(frozen=True)
class Variant:
    threads: int
    compiled: bool
    precision: Precision

    @property
    def label(self) -> str:
        kind = "compiled (AOTInductor)" if self.compiled else "eager"
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}, {kind}, {self.precision.value}"


def variants(threads: tuple[int, ...] | None = None) -> list[Variant]:
    counts = threads or tuple(range(1, machine_threads() + 1))
    precisions = [Precision.FP32, *([Precision.BF16] if native_bf16() else [])]
    return [Variant(t, c, p) for p in precisions for c in (False, True) for t in counts]


class Networks:
    """Loaded networks per (precision, compiled, batch), built once and reused across measurements."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._models: dict[Precision, LoadedModel] = {}
        self._compiled: dict[tuple[Precision, int], LoadedModel] = {}
        self.build_seconds: dict[tuple[Precision, int], float] = {}  # packages built (not cached) here

    def eager(self, precision: Precision) -> LoadedModel:
        if precision not in self._models:
            model = load_model(self.model_dir)
            dtype = torso_dtype(precision, torch.device("cpu"))
            if dtype != torch.float32:
                model.net.convert_torso_to(dtype)  # type: ignore[operator]
            self._models[precision] = model
        return self._models[precision]

    def packages(self, precision: Precision) -> PackageBuilder:
        """The server's own builder: same key (machine threads, like a default server), same folder."""
        spec = PackageSpec(self.model_dir, precision.value, machine_threads())
        return PackageBuilder(self.eager(precision), spec, compile_cache_dir(EngineSettings()))

    def get(self, variant: Variant, batch: int) -> LoadedModel:
        if not variant.compiled:
            return self.eager(variant.precision)
        key = (variant.precision, batch)
        if key not in self._compiled:
            builder = self.packages(variant.precision)
            start = time.perf_counter()
            cached = builder.cached(batch)
            denoiser = builder(batch)
            if not cached:
                self.build_seconds[key] = time.perf_counter() - start
            self._compiled[key] = dataclasses.replace(self.eager(variant.precision), denoiser=denoiser)
        return self._compiled[key]
