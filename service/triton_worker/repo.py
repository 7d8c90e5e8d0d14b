"""Make a model_store folder a Triton model: config.pbtxt + version folder 1/ with a model.py shim.

A model_store folder (model.json + weights) doubles as a Triton model folder, so a model repository is
model_store/ itself; Triton is started with `--model-control-mode=explicit --load-model=NAME` for each
diffusion model, because other folders there (fmnist-classifier) are not Triton models.

The Triton model name is the folder's name (Triton requires config.pbtxt's name to match it); the HTTP
API names a model by its manifest's name. `ddpm triton-config --model model_store/NAME` is meant to call
`write_triton_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from service.backends.triton.protocol import INPUTS, OUTPUTS
from service.model.manifest import MANIFEST_FILE

CONFIG_FILE = "config.pbtxt"
VERSION = "1"
SHIM = '''"""Triton's entry point for this model folder: the engine model of the installed ddpm-serve."""

from service.triton_worker.model import TritonPythonModel  # noqa: F401
'''


def config_pbtxt(name: str, parameters: Mapping[str, str] | None = None) -> str:
    """A decoupled Python-backend model config whose tensors are service.backends.triton.protocol's.

    No instance_group: Triton then makes one instance per visible GPU (KIND_GPU), or one on the CPU,
    which is one engine per device, as the embedded pool has."""
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0  # the engine batches across requests itself (continuous batching)",
        "model_transaction_policy { decoupled: true }  # responses are sent when a request's images end",
    ]
    for name_, (dtype, dims, optional) in INPUTS.items():
        extra = " optional: true" if optional else ""
        lines.append(f'input {{ name: "{name_}" data_type: TYPE_{_type(dtype)} dims: {_dims(dims)}{extra} }}')
    for name_, (dtype, dims) in OUTPUTS.items():
        lines.append(f'output {{ name: "{name_}" data_type: TYPE_{_type(dtype)} dims: {_dims(dims)} }}')
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_model(model_dir: Path, parameters: Mapping[str, str] | None = None) -> Path:
    """Write config.pbtxt and 1/model.py into a model folder; returns the config's path."""
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{model_dir}: no {MANIFEST_FILE}; not a model folder")
    version = model_dir / VERSION
    version.mkdir(exist_ok=True)
    (version / "model.py").write_text(SHIM)
    config = model_dir / CONFIG_FILE
    config.write_text(config_pbtxt(model_dir.name, parameters))
    return config


def _type(dtype: str) -> str:
    return "STRING" if dtype == "BYTES" else dtype


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"
