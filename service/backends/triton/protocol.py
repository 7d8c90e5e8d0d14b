"""The wire format between the gateway (service.backends.triton) and the Triton model
(service.triton_worker.model): tensor names, dtypes and shapes, and how errors travel.

Pure numpy on purpose: the gateway does not import Triton's server utilities, the worker does not import
tritonclient, and both must agree on this one file. `config_pbtxt` (service.triton_worker.repo) writes
the same names into each model's config.pbtxt.

Errors travel in an ERROR output of an ordinary final response rather than as a Triton error response:
tritonclient's stream callback drops the request id of an error response, so the gateway could not tell
which request failed. An ERROR response carries the engine error's `code` (the shared vocabulary of
service.engine.errors), its message and, for queue_full, the retry delay.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.backends.base import DEFAULT_SAMPLER, GenerationSpec, UnknownModel
from service.diffusion.config import VarianceType
from service.engine import errors
from service.engine.degrade import DegradeReason, StepOption
from service.engine.generation import Degradation

# name -> (Triton dtype, dims, optional). Every input is a [1] tensor; max_batch_size is 0 because the
# engine batches across requests by itself (continuous batching), not Triton's dynamic batcher.
INPUTS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    "REQUEST_ID": ("BYTES", (1,), False),  # the engine's group id: a later CANCEL names it
    "CLASS_LABEL": ("INT64", (1,), True),  # absent or -1: unconditional
    "STEPS": ("INT32", (1,), True),  # K
    "SAMPLER": ("BYTES", (1,), True),  # a name in service.diffusion.samplers (default "ddpm")
    "ETA": ("FP32", (1,), True),  # < 0: not given
    "SEED": ("INT64", (1,), True),
    "NUM_IMAGES": ("INT32", (1,), True),
    "TIMEOUT_SECONDS": ("FP32", (1,), True),  # absent or <= 0: no deadline
    "PROGRESS": ("BOOL", (1,), True),  # send a PROGRESS response per step milestone
    "CANCEL": ("BOOL", (1,), True),  # a control request: cancel REQUEST_ID's images
    "VARIANCE": ("BYTES", (1,), True),  # absent or empty: the model's own (ddpm's Sigma, see VarianceType)
    # JSON [{"steps", "sampler", "variance"}, ...]: coarser options accepted under load (engine.degrade)
    "FALLBACKS": ("BYTES", (1,), True),
    "PREVIEW_EVERY": ("INT32", (1,), True),  # with PROGRESS: a PREVIEW every this many steps; <= 0: none
}
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "IMAGES": ("UINT8", (-1, -1, -1, -1)),  # [num_images, H, W, C]
    "STEPS_USED": ("INT32", (1,)),  # the K the images were sampled with
    "QUEUE_SECONDS": ("FP32", (-1,)),  # per image: arrival -> admission into a slot
    "TOTAL_SECONDS": ("FP32", (-1,)),  # per image: arrival -> done
    "PROGRESS": ("INT32", (3,)),  # image_index, steps_done, num_steps (a non-final response)
    "PREVIEW": ("UINT8", (-1, -1, -1)),  # beside PROGRESS when one is due: the predicted x0, [H, W, C]
    "ERROR": ("BYTES", (1,)),  # JSON {"code", "message", "retry_after"} (a final response)
    "DEGRADATION": ("BYTES", (1,)),  # JSON of engine.generation.Degradation; empty: ran as asked
}
NUMPY_DTYPES: dict[str, Any] = {
    "BYTES": np.object_,
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}
MAX_INT64 = 2**63 - 1

# Every error class a worker may report, by code; anything else arrives as a plain EngineError.
_ERROR_TYPES: dict[str, type[errors.EngineError]] = {
    cls.code: cls
    for cls in (
        errors.EngineError,
        UnknownModel,
        errors.InvalidRequest,
        errors.QueueFull,
        errors.Cancelled,
        errors.DeadlineExceeded,
        errors.NonFiniteOutput,
        errors.ExecutorFailed,
        errors.EngineDead,
        errors.EngineShuttingDown,
    )
}


@dataclass(frozen=True)
class StreamEvent:
    """What a worker's gRPC stream delivered (see connection), tagged with the stream's epoch so
    that a late event of a stream already replaced by a reconnect is recognisable."""

    url: str
    epoch: int
    request_id: str | None  # None: an error that names no request
    result: Any  # a tritonclient InferResult, or None with an error
    final: bool
    error: Exception | None = None
    broken: bool = False  # the stream itself failed: every request on it is lost


@dataclass(frozen=True)
class WireRequest:
    """One generation as the worker receives it (or a cancel, when `cancel` is set)."""

    request_id: str
    class_label: int | None = None
    steps: int = 1
    sampler: str = DEFAULT_SAMPLER
    eta: float | None = None
    seed: int = 0
    num_images: int = 1
    timeout_seconds: float | None = None
    progress: bool = False
    cancel: bool = False
    variance: str | None = None  # a VarianceType value; None: the model's own
    fallbacks: tuple[StepOption, ...] = ()
    preview_every: int | None = None

    def tensors(self) -> dict[str, np.ndarray]:
        """The input tensors of this request (what the gateway sends)."""
        if not 0 <= self.seed <= MAX_INT64:
            raise errors.InvalidRequest(f"seed must be between 0 and {MAX_INT64}, got {self.seed}")
        values: dict[str, Any] = {"REQUEST_ID": self.request_id.encode()}
        if self.cancel:
            values["CANCEL"] = True
        else:
            # Optional inputs only when they differ from what from_tensors takes for a missing one: each
            # tritonclient input costs the gateway CPU (13 inputs were 0.33 ms of a request's 3.5 ms).
            values.update(STEPS=self.steps, SEED=self.seed, NUM_IMAGES=self.num_images)
            optional: dict[str, Any] = {
                "CLASS_LABEL": self.class_label,
                "SAMPLER": None if self.sampler == DEFAULT_SAMPLER else self.sampler.encode(),
                "ETA": self.eta,
                "TIMEOUT_SECONDS": self.timeout_seconds or None,
                "PROGRESS": self.progress or None,
                "VARIANCE": self.variance.encode() if self.variance else None,
                "FALLBACKS": encode_fallbacks(self.fallbacks).encode() if self.fallbacks else None,
                "PREVIEW_EVERY": self.preview_every or None,
            }
            values.update({name: value for name, value in optional.items() if value is not None})
        return {
            name: np.array([value], dtype=NUMPY_DTYPES[INPUTS[name][0]]) for name, value in values.items()
        }

    @classmethod
    def from_spec(
        cls, spec: GenerationSpec, request_id: str, timeout_seconds: float | None, progress: bool
    ) -> WireRequest:
        """What the gateway sends for a generation (already validated against the model's manifest)."""
        if not isinstance(spec.steps, int) or isinstance(spec.steps, bool):
            raise errors.InvalidRequest(f"the Triton backend takes an integer K, got {spec.steps!r}", "steps")
        return cls(
            request_id=request_id,
            class_label=spec.class_label,
            steps=spec.steps,
            sampler=spec.sampler,
            eta=spec.eta,
            seed=spec.seed,
            num_images=spec.num_images,
            timeout_seconds=timeout_seconds,
            progress=progress,
            variance=None if spec.variance is None else str(spec.variance),
            fallbacks=spec.fallbacks,
            preview_every=spec.preview_every,
        )

    def spec(self, model: str) -> GenerationSpec:
        """The generation the worker runs (its engine validates it)."""
        if self.variance is not None and self.variance not in {v.value for v in VarianceType}:
            names = ", ".join(v.value for v in VarianceType)
            raise errors.InvalidRequest(f"variance must be one of {names}, got {self.variance!r}", "variance")
        return GenerationSpec(
            model=model,
            class_label=self.class_label,
            steps=self.steps,
            num_images=self.num_images,
            seed=self.seed,
            sampler=self.sampler,
            eta=self.eta,
            variance=None if self.variance is None else VarianceType(self.variance),
            timeout_seconds=self.timeout_seconds,
            fallbacks=self.fallbacks,
            preview_every=self.preview_every,
        )

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> WireRequest:
        """Parse what the worker received; missing optional inputs take their defaults."""

        def scalar(name: str, default: Any) -> Any:
            array = tensors.get(name)
            if array is None or array.size == 0:
                return default
            value = array.reshape(-1)[0]
            return value.decode() if isinstance(value, bytes) else value.item()

        request_id = scalar("REQUEST_ID", "")
        if not request_id:
            raise errors.InvalidRequest("REQUEST_ID is required")
        label = int(scalar("CLASS_LABEL", -1))
        eta = float(scalar("ETA", -1.0))
        timeout = float(scalar("TIMEOUT_SECONDS", 0.0))
        preview_every = int(scalar("PREVIEW_EVERY", 0))
        return cls(
            request_id=request_id,
            class_label=None if label < 0 else label,
            steps=int(scalar("STEPS", 1)),
            sampler=str(scalar("SAMPLER", DEFAULT_SAMPLER)),
            eta=None if eta < 0 else eta,
            seed=int(scalar("SEED", 0)),
            num_images=int(scalar("NUM_IMAGES", 1)),
            timeout_seconds=timeout if timeout > 0 else None,
            progress=bool(scalar("PROGRESS", False)),
            cancel=bool(scalar("CANCEL", False)),
            variance=str(scalar("VARIANCE", "")) or None,
            fallbacks=decode_fallbacks(str(scalar("FALLBACKS", ""))),
            preview_every=preview_every if preview_every > 0 else None,
        )


def encode_fallbacks(options: tuple[StepOption, ...]) -> str:
    return json.dumps([[o.steps, o.sampler, o.variance and str(o.variance)] for o in options])


def decode_fallbacks(text: str) -> tuple[StepOption, ...]:
    """The FALLBACKS input; the worker's engine validates every option like a request of its own."""
    if not text:
        return ()
    try:
        return tuple(
            StepOption(int(steps), str(sampler), None if variance is None else VarianceType(variance))
            for steps, sampler, variance in json.loads(text)
        )
    except (ValueError, TypeError) as e:
        raise errors.InvalidRequest(f"FALLBACKS is not a list of [steps, sampler, variance]: {e}") from None


def result_tensors(
    images: np.ndarray,
    steps: int,
    queue_seconds: list[float],
    total_seconds: list[float],
    degradation: Degradation | None = None,
) -> dict[str, np.ndarray]:
    """The outputs of a successful final response; `images` is uint8 [n, H, W, C]."""
    return {
        "IMAGES": np.ascontiguousarray(images, dtype=np.uint8),
        "STEPS_USED": np.array([steps], dtype=np.int32),
        "QUEUE_SECONDS": np.asarray(queue_seconds, dtype=np.float32),
        "TOTAL_SECONDS": np.asarray(total_seconds, dtype=np.float32),
        "DEGRADATION": np.array([encode_degradation(degradation).encode()], dtype=np.object_),
    }


def encode_degradation(degradation: Degradation | None) -> str:
    if degradation is None:
        return ""
    fields = dataclasses.asdict(degradation)
    fields["variance"] = None if degradation.variance is None else str(degradation.variance)
    return json.dumps(fields)


def decode_degradation(raw: np.ndarray | None) -> Degradation | None:
    """The DEGRADATION output (absent from older workers, empty when the request ran as asked)."""
    if raw is None or raw.size == 0:
        return None
    value = raw.reshape(-1)[0]
    text = value.decode() if isinstance(value, bytes) else str(value)
    if not text:
        return None
    fields = json.loads(text)
    return Degradation(
        reason=DegradeReason(fields["reason"]),
        steps_asked=fields["steps_asked"],
        sampler=fields["sampler"],
        variance=None if fields["variance"] is None else VarianceType(fields["variance"]),
        steps_used=tuple(fields["steps_used"]),
        replanned_at=tuple(fields["replanned_at"]),
    )


def progress_tensors(
    image_index: int, steps_done: int, num_steps: int, preview: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    tensors = {"PROGRESS": np.array([image_index, steps_done, num_steps], dtype=np.int32)}
    if preview is not None:
        tensors["PREVIEW"] = np.ascontiguousarray(preview, dtype=np.uint8)
    return tensors


def error_tensors(error: errors.EngineError) -> dict[str, np.ndarray]:
    retry_after = error.retry_after if isinstance(error, errors.QueueFull) else None
    payload = json.dumps({"code": error.code, "message": str(error), "retry_after": retry_after})
    return {"ERROR": np.array([payload.encode()], dtype=np.object_)}


def decode_error(raw: np.ndarray) -> errors.EngineError:
    """The engine error an ERROR output stands for (an unknown code stays a plain EngineError)."""
    value = raw.reshape(-1)[0]
    text = value.decode() if isinstance(value, bytes) else str(value)
    try:
        payload = json.loads(text)
        code, message = str(payload["code"]), str(payload["message"])
    except (ValueError, KeyError, TypeError):
        return errors.EngineError(f"the worker sent an unreadable error: {text[:200]}")
    cls = _ERROR_TYPES.get(code)
    if cls is errors.QueueFull:
        return errors.QueueFull(message, retry_after=float(payload.get("retry_after") or 1.0))
    if cls is None:
        return errors.EngineError(f"{code}: {message}")
    return cls(message)
