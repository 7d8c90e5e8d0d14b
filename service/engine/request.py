"""What a caller asks for (Request, immutable) and how far it has got (RowState, mutable, engine-owned).

One row is one image. A generation of n images (service.engine.generation) becomes n Requests sharing
a `group_id`, with image_index 0..n-1: each image is seeded by image_seed(seed, image_index), so it is
the same image whether it runs alone, beside its siblings, or in a batch of strangers.

This module must not import torch: the scheduler, which is tested without torch, works on these types.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from service.diffusion.config import VarianceType
from service.engine.degrade import DegradeReason, GroupDecision, StepOption
from service.engine.errors import Cancelled, DeadlineExceeded, EngineError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Request:
    """One image to generate, made by GenerationSpec.rows after validation (no field is re-checked here).
    `deadline` and `arrival` are time.monotonic() seconds."""

    request_id: str
    group_id: str
    model: str
    class_label: int | None
    steps: int | str  # K, or a respacing string such as "ddim50" (see service.diffusion.respacing)
    sampler: str = "ddpm"
    eta: float = 0.0
    seed: int = 0
    image_index: int = 0
    variance: VarianceType | None = None  # None: the model's own variance type
    deadline: float | None = None
    arrival: float = field(default_factory=time.monotonic)
    # Coarser ways to run it the caller accepts under load, best first, the floor last (degrade.py);
    # empty: the row runs as asked or not at all.
    fallbacks: tuple[StepOption, ...] = ()
    # Send the predicted x0 every this many steps (bounded by MAX_PREVIEWS); None: no previews.
    preview_every: int | None = None

    @property
    def options(self) -> list[StepOption]:
        """(asked, *fallbacks): what admission chooses from. Only for integer `steps`."""
        assert isinstance(self.steps, int), "fallbacks need an integer K"
        return [StepOption(self.steps, self.sampler, self.variance), *self.fallbacks]

    @property
    def floor_steps(self) -> int | None:
        """The fewest steps the caller accepts (None: no degrading)."""
        return self.fallbacks[-1].steps if self.fallbacks else None


# Previews of one image are at most this many, whatever `preview_every` asks. Their cost is not the
# device -> host copy (0.6 % of the engine thread) but the bytes and wake-ups around them: a base64 PNG
# per event through the event loop, the socket and the client, which on a 2-core server come out of the
# network's threads. Measured at saturation with every request asking for the most (loadtest/previews.py):
# at most 20 an image cost 7.5 % of served throughput; docs/previews.md has the bound shipped.
MAX_PREVIEWS = 10


def preview_period(preview_every: int | None, num_steps: int) -> int | None:
    """Steps between two previews of a K = `num_steps` row: preview_every, raised to keep MAX_PREVIEWS."""
    if preview_every is None:
        return None
    return max(preview_every, -(-num_steps // MAX_PREVIEWS))


class RowStatus(StrEnum):
    """Where a row is; the last four are terminal (a bounded set: usable as a metrics label)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    FAILED = "failed"

    @classmethod
    def for_error(cls, error: EngineError) -> RowStatus:
        if isinstance(error, Cancelled):
            return cls.CANCELLED
        if isinstance(error, DeadlineExceeded):
            return cls.DEADLINE_EXCEEDED
        return cls.FAILED


@dataclass(frozen=True)
class RowProgress:
    request: Request
    steps_done: int
    num_steps: int
    preview: np.ndarray | None = None  # the predicted x0 after this step ([H, W, C] uint8), when due


@dataclass(frozen=True)
class RowResult:
    """The outcome of one row: an image ([H, W, C] uint8, as service.images.to_uint8) or an error."""

    request: Request  # as run: a degraded row's sampler, K and variance are the ones it ran
    status: RowStatus
    image: np.ndarray | None
    error: EngineError | None
    steps_done: int
    queue_seconds: float  # arrival -> admission into a slot (-> the end, if never admitted)
    total_seconds: float  # arrival -> the end
    asked: Request | None = None  # what the caller asked, when the row ran something coarser
    degraded: DegradeReason | None = None
    replanned_at: int | None = None  # steps done when re-planned mid-flight

    @property
    def ok(self) -> bool:
        return self.status is RowStatus.FINISHED


@dataclass(eq=False)
class RowState:
    """The engine's view of one row. Slot tensors (latents, RNG) live in the executor, keyed by `slot`."""

    request: Request
    num_steps: int
    on_done: Callable[[RowResult], None] | None = None
    on_progress: Callable[[RowProgress], None] | None = None
    status: RowStatus = RowStatus.QUEUED
    slot: int | None = None
    cursor: int = -1  # respaced index k of the next step: num_steps - 1 down to 0; -1 when done
    draws: int = 0  # noise draws taken from the row's stream, x_T included
    cancel_requested: bool = False
    admitted_at: float | None = None
    first_step_at: float | None = None
    finished_at: float | None = None
    reported_percent: int = -1  # last progress percentage reported (progress callbacks are throttled)
    group: GroupDecision | None = None  # shared by the rows of a request with fallbacks
    asked: Request | None = None  # set when admission or a re-plan changed what the row runs
    degraded: DegradeReason | None = None
    replanned_at: int | None = None  # steps done when the row was re-planned mid-flight

    def replan(self, num_steps: int, cursor: int) -> None:
        """Continue on a re-planned schedule of `num_steps` steps, at its step `cursor`."""
        self.replanned_at = self.steps_done
        self.asked = self.asked or self.request
        self.num_steps, self.cursor = num_steps, cursor
        self.degraded = DegradeReason.REPLANNED

    def degrade(self, option: StepOption, reason: DegradeReason) -> None:
        """Run `option` instead of the asked request (before the row's first step)."""
        self.asked = self.asked or self.request
        self.request = replace(
            self.request, steps=option.steps, sampler=option.sampler, variance=option.variance
        )
        self.num_steps = option.steps
        self.cursor = self.num_steps - 1
        self.degraded = reason

    def __post_init__(self) -> None:
        self.cursor = self.num_steps - 1

    @property
    def steps_done(self) -> int:
        return self.num_steps - 1 - self.cursor

    @property
    def preview_due(self) -> bool:
        """After a step: the caller wants the predicted x0 now (never after the last step: that is the
        image itself). Counted on the row's own K, a re-planned one included."""
        period = preview_period(self.request.preview_every, self.num_steps)
        return period is not None and self.cursor >= 0 and self.steps_done % period == 0

    @property
    def is_terminal(self) -> bool:
        return self.status not in (RowStatus.QUEUED, RowStatus.RUNNING)

    def result(self, image: np.ndarray | None, error: EngineError | None, now: float) -> RowResult:
        arrival = self.request.arrival
        admitted = self.admitted_at if self.admitted_at is not None else now
        return RowResult(
            request=self.request,
            status=self.status,
            image=image,
            error=error,
            steps_done=self.steps_done,
            queue_seconds=max(0.0, admitted - arrival),
            total_seconds=max(0.0, now - arrival),
            asked=self.asked,
            degraded=self.degraded,
            replanned_at=self.replanned_at,
        )
