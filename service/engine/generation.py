"""One generation: what a caller asks for (GenerationSpec), its single validation against the model, the
rows it becomes, and the collation of the rows' results into one answer.

Every way in (HTTP through either backend, the Triton worker, the CLI, the benchmarks) builds a
GenerationSpec and hands it to an engine, which calls `validate` once; nothing downstream re-checks a
field. Errors are InvalidRequest naming the field, so the API can answer 422 with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from service.diffusion.config import VarianceType
from service.diffusion.respacing import RespacingError
from service.diffusion.samplers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS
from service.engine.degrade import DegradeReason, StepOption
from service.engine.errors import Cancelled, EngineError, InvalidRequest
from service.engine.request import Request, RowResult
from service.model.gamma_table import MAKE_COMMAND
from service.model.manifest import ModelManifest

MAX_SEED = 2**63 - 1  # per-image seeds are derived from 63 bits (service.diffusion.noise.image_seed)


@dataclass(frozen=True)
class GenerationSpec:
    """One request, fully decided: K chosen, seed chosen, deadline known."""

    model: str
    class_label: int | None
    steps: int | str  # K, or a respacing string such as "ddim50" (service.diffusion.respacing)
    num_images: int = 1
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    eta: float | None = None  # None: not given (samplers that use it take 0)
    variance: VarianceType | None = None  # None: the model's own variance type
    timeout_seconds: float | None = None
    # Coarser (sampler, K) the caller accepts under load, best first, the floor last (engine.degrade).
    fallbacks: tuple[StepOption, ...] = ()
    preview_every: int | None = None  # progress carries the predicted x0 every this many steps

    def validate(
        self,
        manifest: ModelManifest,
        respace: Callable[[int | str, str], int] | None = None,
        has_gamma: bool = False,
    ) -> int:
        """Check every field against the model; returns K after respacing. Raises InvalidRequest.

        `respace(steps, sampler)` gives K for a step budget of a sampler (raising RespacingError);
        engines pass their cached coefficient tables, the default builds the sampler's process.
        `has_gamma`: the model has its Gamma table (gamma.json), which variance=analytic needs."""
        if self.model != manifest.name:
            raise InvalidRequest(
                f"no model named {self.model!r} here; this one is {manifest.name!r}", "model"
            )
        _check_label(self.class_label, manifest)
        if self.num_images < 1:
            raise InvalidRequest(f"num_images must be >= 1, got {self.num_images}", "num_images")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}, got {self.seed}", "seed")
        sampler = SAMPLERS.get(str(self.sampler))
        if sampler is None:
            choices = ", ".join(SAMPLER_NAMES)
            raise InvalidRequest(f"sampler must be one of {choices}, got {self.sampler!r}", "sampler")
        if self.eta is not None:
            if not sampler.uses_eta:
                users = " or ".join(repr(s.name) for s in SAMPLERS.values() if s.uses_eta)
                message = f"eta applies to sampler {users} only; remove it or set sampler to {users}"
                raise InvalidRequest(message, "eta")
            if not 0.0 <= self.eta <= 1.0:
                raise InvalidRequest(f"eta must be between 0 and 1, got {self.eta}", "eta")
        self._check_variance(manifest, has_gamma)
        if manifest.architecture.kind == "superres":
            message = "super-resolution models need a low-resolution input; sampling them is unsupported"
            raise InvalidRequest(message, "model")
        if self.preview_every is not None and self.preview_every < 1:
            message = f"preview_every must be >= 1 (steps between previews), got {self.preview_every}"
            raise InvalidRequest(message, "preview_every")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise InvalidRequest(f"the timeout must be positive, got {self.timeout_seconds}", "timeout_ms")
        by_sampler = respace or partial(_schedule_length, manifest)
        num_steps = _num_steps(self.steps, manifest, lambda steps: by_sampler(steps, sampler.name))
        self._check_fallbacks(manifest, by_sampler, has_gamma)
        return num_steps

    def _check_fallbacks(
        self, manifest: ModelManifest, respace: Callable[[int | str, str], int], has_gamma: bool
    ) -> None:
        """Each fallback is a valid request of its own, with fewer steps than the one before it."""
        if not self.fallbacks:
            return
        if not isinstance(self.steps, int):
            raise InvalidRequest("degrading under load needs an integer K, not a respacing string", "steps")
        previous = self.steps
        for option in self.fallbacks:
            if not 1 <= option.steps < previous:
                message = (
                    f"a fallback must take fewer steps than the option before it and at least 1: "
                    f"K={option.steps} after K={previous}"
                )
                raise InvalidRequest(message, "min_steps")
            alone = GenerationSpec(
                self.model, self.class_label, option.steps, sampler=option.sampler, variance=option.variance
            )
            try:
                alone.validate(manifest, respace, has_gamma)
            except InvalidRequest as e:
                raise InvalidRequest(
                    f"fallback {option.sampler} K={option.steps}: {e}", "min_steps"
                ) from None
            previous = option.steps

    def _check_variance(self, manifest: ModelManifest, has_gamma: bool) -> None:
        if self.variance is None:
            return
        try:
            variance = VarianceType(self.variance)
        except ValueError:
            names = ", ".join(v.value for v in VarianceType)
            raise InvalidRequest(
                f"variance must be one of {names}, got {self.variance!r}", "variance"
            ) from None
        if variance is VarianceType.LEARNED_RANGE and not manifest.diffusion.learn_sigma:
            message = "this model has no learned variance: use fixed_small or fixed_large"
            raise InvalidRequest(message, "variance")
        if variance is VarianceType.ANALYTIC and not has_gamma:
            message = (
                f"variance=analytic needs model {manifest.name!r}'s Gamma table (gamma.json), which it "
                f"does not have: make it with `{MAKE_COMMAND}`, or use learned_range, fixed_small or "
                "fixed_large"
            )
            raise InvalidRequest(message, "variance")

    def rows(self, group_id: str, arrival: float | None = None) -> list[Request]:
        """The validated spec's rows: ids "<group_id>/<i>", image indices 0..num_images-1."""
        arrival = time.monotonic() if arrival is None else arrival
        deadline = None if self.timeout_seconds is None else arrival + self.timeout_seconds
        variance = None if self.variance is None else VarianceType(self.variance)
        return [
            Request(
                request_id=f"{group_id}/{i}",
                group_id=group_id,
                model=self.model,
                class_label=self.class_label,
                steps=self.steps,
                sampler=str(self.sampler),
                eta=float(self.eta or 0.0),
                seed=self.seed,
                image_index=i,
                variance=variance,
                deadline=deadline,
                arrival=arrival,
                fallbacks=self.fallbacks,
                preview_every=self.preview_every,
            )
            for i in range(self.num_images)
        ]


@dataclass(frozen=True)
class Degradation:
    """How a request ran when the load made it coarser than asked (service.engine.degrade).

    Admission decides for the whole request (its images match); a mid-flight re-plan is per image, so
    the steps are per image. `sampler` and `variance` are those of the first degraded image."""

    reason: DegradeReason
    steps_asked: int | str
    sampler: str
    variance: VarianceType | None
    steps_used: tuple[int, ...]  # network evaluations per image
    replanned_at: tuple[int | None, ...]  # per image: steps done when re-planned, None if not

    @classmethod
    def of(cls, rows: list[RowResult]) -> Degradation | None:
        degraded = [r for r in rows if r.degraded is not None]
        if not degraded:
            return None
        first = degraded[0]
        assert first.asked is not None and first.degraded is not None
        return cls(
            reason=first.degraded,
            steps_asked=first.asked.steps,
            sampler=first.request.sampler,
            variance=first.request.variance,
            steps_used=tuple(r.steps_done for r in rows),
            replanned_at=tuple(r.replanned_at for r in rows),
        )


@dataclass(frozen=True)
class GenerationResult:
    images: list[np.ndarray]  # uint8 [H, W, C], in image_index order
    steps: int | str  # K as run: the asked K, or the most steps an image took when degraded
    queue_seconds: float  # the longest wait of any image for a slot
    total_seconds: float  # submission -> the last image
    degradation: Degradation | None = None  # None: every image ran as asked


@dataclass(frozen=True)
class GenerationProgress:
    image_index: int
    steps_done: int
    num_steps: int
    preview: np.ndarray | None = None  # the predicted x0 ([H, W, C] uint8), when one was due


class Collation:
    """Gathers one generation's row results, in any order, into one answer.

    `add` returns the answer once every row has ended: a GenerationResult, or the error that ended the
    request (the first one that was not the consequence of cancelling its siblings). `failed` turns true
    at the first failed row: the caller should then cancel the others, whose images would be discarded.
    """

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec
        self.results: dict[int, RowResult] = {}
        self.failed = False

    def ordered(self) -> list[RowResult]:
        """Every row's result in image order (once all have ended)."""
        return [self.results[i] for i in range(self.spec.num_images)]

    def add(self, result: RowResult) -> GenerationResult | EngineError | None:
        self.results[result.request.image_index] = result
        self.failed = self.failed or not result.ok
        if len(self.results) < self.spec.num_images:
            return None
        ordered = self.ordered()
        errors = [r.error for r in ordered if not r.ok]
        if errors:
            causes = [e for e in errors if e is not None and not isinstance(e, Cancelled)]
            return (causes or errors)[0] or EngineError("an image failed without an error")
        degradation = Degradation.of(ordered)
        return GenerationResult(
            images=[r.image for r in ordered if r.image is not None],
            steps=self.spec.steps if degradation is None else max(degradation.steps_used),
            queue_seconds=max(r.queue_seconds for r in ordered),
            total_seconds=max(r.total_seconds for r in ordered),
            degradation=degradation,
        )


def _check_label(class_label: int | None, manifest: ModelManifest) -> None:
    num_classes = manifest.num_classes
    if num_classes is None:
        if class_label is not None:
            raise InvalidRequest(f"model {manifest.name!r} is unconditional: omit class_label", "class_label")
        return
    if class_label is None:
        message = f"model {manifest.name!r} is class-conditional: give class_label (0..{num_classes - 1})"
        raise InvalidRequest(message, "class_label")
    if isinstance(class_label, bool) or not 0 <= class_label < num_classes:
        message = f"class_label must be between 0 and {num_classes - 1}, got {class_label}"
        raise InvalidRequest(message, "class_label")


def _schedule_length(manifest: ModelManifest, steps: int | str, sampler: str) -> int:
    return SAMPLERS[sampler].schedule(manifest.diffusion, steps).num_timesteps


def _num_steps(steps: int | str, manifest: ModelManifest, respace: Callable[[int | str], int]) -> int:
    T = manifest.diffusion.num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int | str):
        raise InvalidRequest(f"steps must be an integer K or a respacing string, got {steps!r}", "steps")
    if isinstance(steps, int) and not 1 <= steps <= T:
        raise InvalidRequest(
            f"steps must be between 1 and T={T} for model {manifest.name!r}, got {steps}", "steps"
        )
    if isinstance(steps, str) and not steps.strip():
        raise InvalidRequest("steps must not be empty", "steps")
    try:
        return respace(steps)
    except RespacingError as e:
        raise InvalidRequest(f"steps: {e}", "steps") from None
