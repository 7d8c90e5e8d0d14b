"""Compiled CPU networks without making the server wait for them: serve eager, swap in compiled sizes.

Why in the background: compiled, the bundled network runs 1.4-1.8x faster on the CPU than eager
(docs/performance.md), but building it takes about a minute per batch size on a 2-core machine (a few
milliseconds once packages.py's cache holds it). Blocking readiness on that would make a first start-up
many minutes long, so the engine is ready on eager at once and this thread obtains one batch size after
another (`build(size)`: from the cache, or built in a child process); each size serves compiled from the
moment it is loaded and checked.

Why one static network per size rather than one with a dynamic batch dimension: measured on the
development machine, a static graph at 9 rows ran in 34 ms, a dynamic one in 44 ms and eager in 62 ms;
the dynamic graph also guarded itself off the largest size. Sizes are dense enough that padding a batch
to the next compiled size costs at most buckets.MAX_PADDING of it.

Safety: every size is checked against eager on random inputs before it serves (MAX_ABS_ERROR); a size
that fails the check, or whose build raises, stays eager and the thread stops (logged with the reason).
Only sizes in `ready` are ever called compiled by the engine thread, so no request waits on a build.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from service.diffusion.sampling import Denoiser
from service.engine.threads import confine_to_one_thread

log = logging.getLogger(__name__)

# eps and v are O(1). Measured largest compiled-vs-eager differences on the CPU (over a batch of 16
# images): ~5e-6 with an fp32 torso, ~0.016 with a bf16 torso (8-bit mantissa; the kernels round in
# another order). A wrong kernel is off by O(1), so both limits keep a wide margin both ways.
MAX_ABS_ERROR = 1e-3  # fp32 torso
MAX_ABS_ERROR_REDUCED = 0.1  # bf16 / fp16 torso
Inputs = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
OnCompiled = Callable[[int, float], None]


class Builder(Protocol):
    """Where compiled networks come from (packages.PackageBuilder)."""

    def __call__(self, size: int) -> Denoiser:
        """The compiled denoiser at `size` rows (may take minutes)."""
        ...

    def cached(self, size: int) -> bool:
        """Whether __call__(size) would be quick (already built)."""
        ...

    def cancel(self) -> None:
        """Abandon a build under way (called from another thread)."""
        ...


class BackgroundCompiler:
    """Obtains `build(size)` for each size in `sizes` (in that order) on a daemon thread."""

    def __init__(
        self,
        eager: Denoiser,
        build: Builder,
        sizes: Sequence[int],
        inputs: Inputs,
        on_compiled: OnCompiled | None = None,
        tolerance: float = MAX_ABS_ERROR,
    ) -> None:
        self.eager = eager
        self.tolerance = tolerance
        self.build = build
        self.sizes = tuple(sizes)
        self.sizes_ascending = tuple(sorted(self.sizes))  # what a row count pads to (buckets.pick_bucket)
        self.inputs = inputs  # random test inputs at a size: (x_t, model_t, y)
        self.on_compiled = on_compiled
        self.runners: dict[int, Denoiser] = {}  # size -> compiled denoiser, written before `ready`
        # Replaced, never mutated: the engine thread reads it without a lock.
        self.ready: frozenset[int] = frozenset()
        self.seconds: dict[int, float] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    @torch.no_grad()
    def load_cached(self) -> None:
        """Obtain now, on the calling thread, the sizes that are already built: a restarted server serves
        compiled from its first request (loading takes milliseconds per size, plus the one-off import of
        the compiler's runtime, about 5 s, which would otherwise hold the GIL while serving)."""
        for size in self.sizes:
            if self.build.cached(size) and not self._obtain(size):
                return

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="ddpm-compile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No further size is started, and a build under way is abandoned."""
        self._stop.set()
        self.build.cancel()
        if self._thread is not None and timeout is not None:
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Until every size is compiled or the thread gave up; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    @torch.no_grad()
    def _run(self) -> None:
        confine_to_one_thread()  # its parity checks must not leave an OpenMP team beside the engine's
        try:
            for size in self.sizes:
                if self._stop.is_set() or not self._obtain(size):
                    return
        finally:
            self.finished_at = time.perf_counter()
            if self.started_at is not None and not self.error:
                seconds = self.finished_at - self.started_at
                log.info("compiled batch sizes %s in %.0f s", sorted(self.ready), seconds)

    def _obtain(self, size: int) -> bool:
        """Build (or load) and check one size; False when it failed and nothing more should be tried."""
        if size in self.ready:
            return True
        start = time.perf_counter()
        try:
            compiled = self.build(size)
            if self._stop.is_set():
                return False
            x_t, model_t, y = self.inputs(size)
            error = max_abs_difference(compiled(x_t, model_t, y), self.eager(x_t, model_t, y))
        except Exception as e:  # no compiler on this machine, an unsupported op: eager keeps serving
            self.error = f"batch {size}: {type(e).__name__}: {e}"
            log.exception("compiling the network at batch %d failed; sizes not yet compiled stay eager", size)
            return False
        if not error <= self.tolerance:  # NaN fails too
            self.error = f"compiled output at batch {size} differs from eager by {error:.3g}"
            log.error("%s; sizes not yet compiled stay eager", self.error)
            return False
        seconds = time.perf_counter() - start
        self.seconds[size] = seconds
        self.runners[size] = compiled
        self.ready = self.ready | {size}
        log.info("batch %d compiled in %.1f s (max |compiled - eager| %.2g)", size, seconds, error)
        if self.on_compiled is not None:
            try:
                self.on_compiled(size, seconds)
            except Exception:
                log.exception("on_compiled callback raised")
        return True


def max_abs_difference(
    a: tuple[torch.Tensor, torch.Tensor | None], b: tuple[torch.Tensor, torch.Tensor | None]
) -> float:
    """The largest |a - b| over (eps, v); inf when either holds a NaN or only one has a v."""
    worst = 0.0
    for left, right in zip(a, b, strict=True):
        if left is None or right is None:
            if (left is None) != (right is None):
                return float("inf")
            continue
        difference = (left.float() - right.float()).abs().max().item()
        if difference != difference:  # NaN: max() would drop it
            return float("inf")
        worst = max(worst, difference)
    return worst
