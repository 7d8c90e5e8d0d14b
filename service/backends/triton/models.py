"""The models a Triton gateway serves, read from their folders (model.json, tradeoff.json; the weights
stay on the workers); requests are validated as the workers' engines validate them.

A model has two names: the API's is its manifest's name, as with the embedded backend; its Triton name
is its folder's name (Triton requires config.pbtxt's name to match the folder).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from service.backends.base import SAMPLERS, BackendStartupError, GenerationSpec, ModelInfo, UnknownModel
from service.backends.model_info import model_info

# Respaced schedule lengths remembered per (model, steps, sampler): building a sampler's schedule from the
# model's T = 4000 steps was a fifth of the gateway's event-loop time per request (docs/gateway-capacity.md).
# Bounded: a respacing string is the client's, so the set of keys is not.
RESPACED_CACHE = 1024


class ServedModels:
    def __init__(self) -> None:
        self._models: dict[str, tuple[ModelInfo, str]] = {}  # API name -> (info, Triton name)
        self._respaced = lru_cache(maxsize=RESPACED_CACHE)(self._schedule_length)

    def add(self, model_dir: Path) -> None:
        info = model_info(model_dir)
        if info.name in self._models:
            raise BackendStartupError(f"{model_dir}: a model named {info.name!r} is already served")
        self._models[info.name] = (info, model_dir.name)

    def __bool__(self) -> bool:
        return bool(self._models)

    def infos(self) -> list[ModelInfo]:
        return [info for info, _ in self._models.values()]

    def triton_names(self) -> list[str]:
        return [name for _, name in self._models.values()]

    def resolve(self, spec: GenerationSpec) -> tuple[ModelInfo, str]:
        """The model `spec` names and its Triton name; raises what the engine would refuse on submit."""
        if spec.model not in self._models:
            raise UnknownModel(f"no model named {spec.model!r}; served: {', '.join(self._models)}")
        info, triton_name = self._models[spec.model]
        respace = lambda steps, sampler: self._respaced(spec.model, steps, sampler)  # noqa: E731
        spec.validate(info.manifest, respace, has_gamma=info.has_gamma)  # what the worker's engine refuses
        return info, triton_name

    def _schedule_length(self, model: str, steps: int | str, sampler: str) -> int:
        """K of a step budget (raises RespacingError, which is not cached)."""
        manifest = self._models[model][0].manifest
        return SAMPLERS[sampler].schedule(manifest.diffusion, steps).num_timesteps
