"""A scripted Backend: lets the API be tested for states and failures a healthy engine never shows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import numpy as np

from service.backends.base import (
    EngineLoad,
    GenerationProgress,
    GenerationResult,
    GenerationSpec,
    ModelInfo,
)
from service.model.manifest import ModelManifest
from service.model.presets import get_preset


def _unconditional() -> ModelInfo:
    """An 8x8 grey unconditional model with T = 100 (never loaded: only its manifest is read)."""
    preset = get_preset("tiny-test")
    assert preset.diffusion is not None
    unet = replace(preset.unet, image_size=8, in_channels=1, out_channels=2, num_classes=None)
    manifest = ModelManifest("uncond", unet, replace(preset.diffusion, num_timesteps=100), image_channels=1)
    return ModelInfo("uncond", 8, 1, None, (), 100, True, None, manifest)


UNCONDITIONAL = _unconditional()


class FakeGeneration:
    id = "fake"

    def __init__(self, spec: GenerationSpec, failure: Exception | None) -> None:
        self.spec = spec
        self.failure = failure
        self.cancelled = False

    async def result(self) -> GenerationResult:
        if self.failure is not None:
            raise self.failure
        image = np.zeros((8, 8, 1), np.uint8)
        return GenerationResult([image] * self.spec.num_images, self.spec.steps, 0.0, 0.01)

    async def progress(self) -> AsyncIterator[GenerationProgress]:
        yield GenerationProgress(0, 1, self.spec.steps)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeBackend:
    models_served: list[ModelInfo] = field(default_factory=lambda: [UNCONDITIONAL])
    is_ready: bool = True
    is_alive: bool = True
    submit_error: Exception | None = None  # raised by submit
    result_error: Exception | None = None  # raised by the generation's result
    submitted: list[GenerationSpec] = field(default_factory=list)
    stopped: bool = False

    async def start(self) -> None:
        pass

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        self.stopped = True

    @property
    def ready(self) -> bool:
        return self.is_ready

    @property
    def alive(self) -> bool:
        return self.is_alive

    def models(self) -> list[ModelInfo]:
        return self.models_served

    def loads(self) -> list[EngineLoad]:
        return [EngineLoad(m.name, "fake", 0, 0, 1) for m in self.models_served]

    def fleet(self) -> None:
        return None

    def memory_bytes(self) -> dict[str, int]:
        return {"fake": 1234}

    def submit(self, spec: GenerationSpec, *, progress: bool = False) -> FakeGeneration:
        if self.submit_error is not None:
            raise self.submit_error
        (info,) = [m for m in self.models_served if m.name == spec.model]
        spec.validate(info.manifest)  # as both real backends do: the engine's one validation
        self.submitted.append(spec)
        return FakeGeneration(spec, self.result_error)
