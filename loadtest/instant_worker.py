"""A Triton Python-backend model that answers every generation at once: the gateway-capacity bench's worker.

loadtest.gateway_capacity copies this file as `1/model.py` of a model folder whose config.pbtxt is the
deployed one (model_store/<name>/config.pbtxt: same name, inputs, outputs, decoupled policy), so the
gateway cannot tell it from the real worker (service.triton_worker.model) except by speed: `execute`
sends each request's final response itself, a fixed image of the manifest's shape, instead of running
the engine. With no engine behind it, what the gateway spends per request is what is left to measure.

The tensors are service/backends/triton/protocol.py's, written out here for the few this model reads and
sends (loadtest/ speaks to the service from outside, so it imports none of its layers; the gateway
decoding these answers is what tests/loadtest/test_gateway_capacity.py checks). The image is
[num_images, H, W, C] uint8 with H, W, C from the model.json beside config.pbtxt (or in the `model_dir`
parameter's folder), a gradient rather than zeros so that PNG encoding does real work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def image_shape(model_dir: Path) -> tuple[int, int, int]:
    """(H, W, C) of the images a model folder's manifest describes."""
    manifest = json.loads((model_dir / "model.json").read_text())
    side = int(manifest["architecture"]["image_size"])
    return side, side, int(manifest["data"]["image_channels"])


def fixed_image(shape: tuple[int, int, int]) -> np.ndarray:
    """A deterministic [H, W, C] uint8 gradient: compressible, but not to nothing."""
    height, width, channels = shape
    rows = np.arange(height, dtype=np.uint16)[:, None, None] * 7
    cols = np.arange(width, dtype=np.uint16)[None, :, None] * 3
    return ((rows + cols + np.arange(channels)[None, None, :] * 50) % 256).astype(np.uint8)


def result_tensors(image: np.ndarray, num_images: int, steps: int) -> dict[str, np.ndarray]:
    """A successful final response: the images, K, no queueing, ran as asked (empty DEGRADATION)."""
    zeros = np.zeros(num_images, dtype=np.float32)
    return {
        "IMAGES": np.repeat(image[None], num_images, axis=0),
        "STEPS_USED": np.array([steps], dtype=np.int32),
        "QUEUE_SECONDS": zeros,
        "TOTAL_SECONDS": zeros,
        "DEGRADATION": np.array([b""], dtype=np.object_),
    }


class TritonPythonModel:
    """What Triton's Python backend calls; one instance (the deployed config names no instance_group)."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only exists inside the backend stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.image = fixed_image(image_shape(Path(params.get("model_dir") or args["model_repository"])))

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            if self._scalar(request, "CANCEL", False):  # nothing runs, so nothing is left to cancel
                self._send(sender, {}, final=True)
                continue
            steps = int(self._scalar(request, "STEPS", 1))
            num_images = int(self._scalar(request, "NUM_IMAGES", 1))
            if self._scalar(request, "PROGRESS", False):
                for index in range(num_images):
                    self._send(sender, {"PROGRESS": np.array([index, steps, steps], dtype=np.int32)})
            self._send(sender, result_tensors(self.image, num_images, steps), final=True)
        return None  # decoupled: every response went through its request's sender

    def finalize(self) -> None:
        pass

    def _scalar(self, request: Any, name: str, default: Any) -> Any:
        """An optional [1] input's value, or its default when absent (as the protocol's parser does)."""
        tensor = self.pb.get_input_tensor_by_name(request, name)
        values = None if tensor is None else tensor.as_numpy().reshape(-1)
        return default if values is None or values.size == 0 else values[0].item()

    def _send(self, sender: Any, tensors: dict[str, np.ndarray], final: bool = False) -> None:
        outputs = [self.pb.Tensor(name, value) for name, value in tensors.items()]
        flags = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        sender.send(self.pb.InferenceResponse(output_tensors=outputs), flags=flags)
