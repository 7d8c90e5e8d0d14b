"""The models a Triton gateway serves, read from their folders (model.json, tradeoff.json; the weights
stay on the workers); requests are validated as the workers' engines validate them.

A model has two names: the API's is its manifest's name, as with the embedded backend; its Triton name
is its folder's name (Triton requires config.pbtxt's name to match the folder).
"""

from __future__ import annotations

from pathlib import Path

from service.backends.base import BackendStartupError, GenerationSpec, ModelInfo, UnknownModel
from service.backends.model_info import model_info


class ServedModels:
    def __init__(self) -> None:
        self._models: dict[str, tuple[ModelInfo, str]] = {}  # API name -> (info, Triton name)

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
        spec.validate(info.manifest, has_gamma=info.has_gamma)  # what the worker's engine would refuse
        return info, triton_name
