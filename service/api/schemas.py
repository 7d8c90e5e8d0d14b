"""Request and response bodies of the HTTP API (they are also the OpenAPI schema behind /docs).

Integers and booleans are strict: "5", 5.5 or true for `steps` are type errors, not silently coerced, so
a client's mistake comes back as a 422 naming the field instead of a surprising image. A number with no
fraction (5.0) is an integer, as JSON and JSON Schema say (some clients write every number that way).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from service.backends.base import DEFAULT_SAMPLER, MAX_PREVIEWS, SAMPLER_NAMES, SAMPLERS

# The registry's names as the request's enum (a Literal built at import: every registered sampler),
# and "auto": the best calibrated sampler for the request's K.
AUTO_SAMPLER = "auto"
SamplerName = Literal[(*SAMPLER_NAMES, AUTO_SAMPLER)]  # type: ignore[valid-type]
SAMPLER_HELP = (
    "; ".join(f"{s.name}: {s.description}" for s in SAMPLERS.values())
    + f"; {AUTO_SAMPLER}: the calibrated sampler with the best FID at this K. Omitted: with steps (or "
    f"nothing) {DEFAULT_SAMPLER} with the model's own variance, the paper's method; with "
    "latency_budget_ms or max_fid the (sampler, K) pair is chosen from the model's calibrated "
    "quality/latency frontier"
)
VarianceName = Literal["learned_range", "fixed_small", "fixed_large", "analytic"]
STEP_CHOOSERS = ("steps", "latency_budget_ms", "max_fid")
# Seeds over HTTP stay JSON-safe integers (JavaScript's Number.MAX_SAFE_INTEGER): every JSON client and
# schema validator reads them exactly, where 63-bit seeds (the engine's range, the CLI's) lose their last
# bits in clients that parse numbers as doubles, and the same request would not give the same image.
MAX_JSON_SEED = 2**53 - 1


def _integral(value: Any) -> Any:
    """5.0 -> 5 (JSON has one number type; JSON Schema's integer includes 5.0); anything else unchanged,
    for the strict int check that follows (5.5, "5" and true stay errors)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"class_label": 7, "steps": 50, "seed": 1234},
                {"class_label": 3, "latency_budget_ms": 500, "response_format": "json"},
                {"class_label": 0, "max_fid": 20, "num_images": 4, "response_format": "json"},
                {"class_label": 5, "steps": 100, "sampler": "ddim", "eta": 0.0, "stream": True},
                {"class_label": 2, "steps": 10, "sampler": "dpm++2m"},
                {"class_label": 4, "steps": 25, "sampler": "ddpm", "variance": "analytic"},
                {"class_label": 1, "steps": 100, "min_steps": 10, "timeout_ms": 15000},
            ]
        },
    )

    model: str | None = Field(None, description="Model name (GET /v1/models); default: the first served.")
    class_label: int | None = Field(
        None, ge=0, strict=True, description="Class to draw (0-based); omit for unconditional models."
    )
    steps: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="K, the number of reverse steps (1..T). Give at most one of steps, latency_budget_ms "
        "and max_fid; with none of them the server's default K is used.",
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="The server picks the largest calibrated K predicted to finish within this budget "
        "under the current load.",
    )
    max_fid: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="The server picks the smallest calibrated K whose measured FID is at most this.",
    )
    min_steps: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Degrade before refusing: under load the server may run fewer steps than asked, down "
        "to this K, rather than answer 429 or 504. It picks the largest calibrated point that fits the "
        "deadline and the queue (from the frontier when the server chose the sampler, else the named "
        "sampler's), and may shorten a running image from its current step when its deadline comes at "
        "risk. The response says what ran and why (degradation). Omitted: never degraded.",
    )
    max_degraded_fid: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="Degrade before refusing, bounded by quality: the worst calibrated FID acceptable "
        "when degraded (calibrated models only). With min_steps too, both bounds hold.",
    )
    sampler: SamplerName | None = Field(None, description=SAMPLER_HELP + ".")
    variance: VarianceName | None = Field(
        None,
        description="How ddpm's reverse variance is obtained: learned_range (the model's learned "
        "Sigma), fixed_small, fixed_large, or analytic (Analytic-DPM; models with a Gamma table). "
        "Omitted: the model's own. ddpm only.",
    )
    eta: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, strict=True, description="DDIM noise scale (ddim only)."
    )
    num_images: int = Field(
        1, ge=1, strict=True, description="Images to generate (at most the server's cap; see the maximum)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_JSON_SEED,
        strict=True,
        description="Makes the output reproducible; chosen by the server (and returned) when omitted.",
    )
    response_format: Literal["png", "json"] = Field(
        "png",
        description="png: one image/png (a grid when num_images > 1), K and seed in X-Steps / X-Seed "
        "headers; json: base64 PNGs with K, seed, timings and calibrated quality.",
    )
    stream: bool = Field(
        False,
        strict=True,
        description="Server-sent events: `progress` per step (and `preview` with preview_every), then "
        "`result` (json).",
    )
    preview_every: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="With stream=true: a `preview` event (the predicted x0 as a small PNG) every this many "
        f"steps of each image; raised to K/{MAX_PREVIEWS} so an image sends at most {MAX_PREVIEWS}. "
        "Off by default.",
    )
    timeout_ms: int | None = Field(
        None, gt=0, strict=True, description="Deadline from arrival; past it the request ends with 504."
    )

    @field_validator(
        "class_label",
        "steps",
        "min_steps",
        "num_images",
        "seed",
        "preview_every",
        "timeout_ms",
        mode="before",
    )
    @classmethod
    def _integral_numbers(cls, value: Any) -> Any:
        return _integral(value)

    @field_validator("preview_every")
    @classmethod
    def _previews_are_streamed(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError(
                "previews_need_stream", "preview_every needs stream=true: previews travel as SSE events"
            )
        return value

    @field_validator("latency_budget_ms", "max_fid")
    @classmethod
    def _one_step_chooser(cls, value: float | None, info: ValidationInfo) -> float | None:
        # Fields validate in declaration order, so the earlier choosers are in info.data already; the
        # error is raised on this field, so the response names it.
        given = [name for name in STEP_CHOOSERS if info.data.get(name) is not None]
        if value is not None and given:
            raise PydanticCustomError(
                "exclusive",
                "give only one of steps, latency_budget_ms and max_fid ({other} was given too)",
                {"other": given[0]},
            )
        return value


class Timings(BaseModel):
    queue_ms: float = Field(description="Longest wait of an image for a batch slot.")
    compute_ms: float = Field(description="Sampling time after admission.")
    total_ms: float = Field(description="Arrival at the engine to the last image.")


class CalibratedQuality(BaseModel):
    """Offline measurement at this (sampler, K), from the model's tradeoff.json."""

    num_samples: int
    fid: float
    precision: float
    recall: float
    class_accuracy: float | None
    bpd: float | None
    seconds_per_image: float


SelectionMode = Literal["steps", "latency_budget", "max_fid", "default"]
SamplerMode = Literal["request", "default", "frontier", "auto"]


class Selection(BaseModel):
    mode: SelectionMode = Field(description="How K was chosen.")
    sampler_mode: SamplerMode = Field(
        description="How the sampler was chosen: named by the request, the default (ddpm with the "
        "model's variance), from the calibrated frontier (latency_budget_ms / max_fid without a "
        "sampler), or auto (the best calibrated sampler at this K)."
    )
    reason: str = Field(description="Why this (sampler, K), in words.")
    predicted_latency_ms: float | None = Field(None, description="For latency_budget: the prediction.")
    candidates: list[int] = Field(default_factory=list, description="The calibrated K values considered.")


DegradeReasonName = Literal["deadline", "queue", "replanned"]


class DegradationInfo(BaseModel):
    reason: DegradeReasonName = Field(
        description="deadline: the asked K would have ended after timeout_ms; queue: admitted smaller "
        "because work was queued behind it; replanned: shortened mid-flight when the load rose (its deadline "
        "came at risk, or work queued behind it)."
    )
    message: str = Field(description="What ran instead of what was asked, in words.")
    steps_asked: int
    sampler_asked: str = Field(description="The sampler variant asked (or chosen before degrading).")
    steps_used: list[int] = Field(description="Network evaluations per image.")
    replanned_at: list[int | None] = Field(
        description="Per image: the steps done when it was re-planned onto a coarser schedule (null: not)."
    )
    fid_asked: float | None = Field(description="Calibrated FID of what was asked (null: not calibrated).")
    fid_used: float | None = Field(
        description="Calibrated FID of what ran (interpolated in log K for an uncalibrated step count)."
    )


class GenerateResponse(BaseModel):
    model: str
    steps: int = Field(description="K actually used (the most steps an image took when degraded).")
    sampler: str = Field(description="The sampler actually used.")
    variance: str | None = Field(description="ddpm's variance type as run; null for other samplers.")
    degraded: bool = Field(False, description="True when the load made the server run less than asked.")
    degradation: DegradationInfo | None = Field(None, description="What ran instead, and why.")
    eta: float
    class_label: int | None
    seed: int
    seed_chosen_by_server: bool
    num_images: int
    images: list[str] = Field(description="Base64-encoded PNG files, in image order.")
    timings: Timings
    quality: CalibratedQuality | None = Field(description="Calibrated quality at this K, if measured.")
    selection: Selection


class ProgressEvent(BaseModel):
    image: int = Field(description="Image index within the request.")
    step: int = Field(description="Steps done for that image.")
    steps: int = Field(description="K.")
    progress: float = Field(description="Fraction of the whole request's steps done (0..1).")


class PreviewEvent(BaseModel):
    image: int = Field(description="Image index within the request.")
    step: int = Field(description="Steps done for that image when x0 was predicted.")
    steps: int = Field(description="K.")
    png: str = Field(description="The predicted x0, base64 PNG, shrunk to at most 128 pixels a side.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable name, e.g. invalid_request, queue_full.")
    message: str = Field(description="What went wrong and what to change.")
    field: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class FrontierPoint(BaseModel):
    sampler: str
    steps: int
    fid: float


class ModelCard(BaseModel):
    name: str
    image_size: int
    image_channels: int
    num_classes: int | None
    class_names: list[str]
    num_timesteps: int = Field(description="T: the largest K.")
    learn_sigma: bool
    samplers: list[str]
    variances: list[str] = Field(description="ddpm's variance types this model runs.")
    default_steps: int
    max_num_images: int
    calibrated_steps: dict[str, list[int]] = Field(
        description="Per sampler variant (ddpm, fixed-small, analytic, ddim, dpm++2m, ...), the K values "
        "with measured quality (the set latency/FID targets pick from when the request names that sampler)."
    )
    frontier: list[FrontierPoint] = Field(
        description="The calibrated FID-vs-K frontier, by increasing K: what latency_budget_ms and max_fid "
        "choose from when the request names no sampler."
    )


class ModelList(BaseModel):
    models: list[ModelCard]


class LatencyStats(BaseModel):
    count: int = Field(description="Images in the window the percentiles are taken over.")
    p50_ms: float
    p90_ms: float
    p99_ms: float


class TradeoffRow(BaseModel):
    sampler: str = Field(description="The sampler variant: a registry name, or ddpm's variance variant.")
    request: dict[str, str] = Field(description="The request fields that run it, e.g. sampler, variance.")
    steps: int
    num_samples: int
    fid: float
    precision: float
    recall: float
    class_accuracy: float | None
    bpd: float | None
    seconds_per_image: float = Field(description="Calibration throughput (batched), not request latency.")
    on_frontier: bool = Field(
        description="On the FID-vs-K Pareto frontier that latency_budget_ms / max_fid choose from."
    )
    live_latency: LatencyStats | None = Field(description="End-to-end latency per image, measured live.")


class TradeoffResponse(BaseModel):
    model: str
    calibrated: bool
    machine: str | None
    feature_extractor: str | None
    reference_set: str | None
    real_vs_real_fid: dict[str, float] | None
    points: list[TradeoffRow]
    live_latency: dict[str, LatencyStats] = Field(
        description="Live latency per K label (exact K, or le_<K> / gt_<K> buckets), calibrated or not."
    )


class Health(BaseModel):
    status: str
