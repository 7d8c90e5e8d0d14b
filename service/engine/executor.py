"""One device: slots, bucketed (optionally compiled and graphed) network, and the per-row sampler step.

`step(rows)` advances every given row by one reverse step with a single network call, whatever each
row's K, position, sampler (any of service.diffusion.samplers, with its own options and per-row state)
or variance type: that is continuous batching. Rows
whose step produced a non-finite value are reported, never turned into images; rows that took their last
step come back as uint8 images.
"""

from __future__ import annotations

import getpass
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from service.diffusion.replan import coarsest_fitting, combined_timesteps, remaining_steps
from service.diffusion.samplers.mixed import mixed_step
from service.diffusion.sampling import Denoiser
from service.engine.background_compile import (
    MAX_ABS_ERROR,
    MAX_ABS_ERROR_REDUCED,
    BackgroundCompiler,
    OnCompiled,
)
from service.engine.buckets import BucketRunner, bucket_sizes, dense_bucket_sizes
from service.engine.compile import (
    compiles_at_warm_up,
    compiles_in_background,
    prepare_denoiser,
    resolved_precision,
)
from service.engine.graphs import CudaGraphs, EmulatedGraphs, GraphBackend
from service.engine.packages import PackageBuilder, PackageSpec
from service.engine.request import RowState
from service.engine.settings import EngineSettings, Precision
from service.engine.slots import SlotTable
from service.engine.tables import StepTables
from service.engine.threads import ThreadPolicy, ThreadSetter, machine_threads, tune
from service.engine.transfers import Transfers
from service.images import to_uint8
from service.model.store import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    bucket: int
    finished: list[tuple[RowState, np.ndarray]] = field(default_factory=list)  # [H, W, C] uint8 images
    non_finite: list[RowState] = field(default_factory=list)
    previews: dict[RowState, np.ndarray] = field(default_factory=dict)  # predicted x0, rows that asked


class Executor:
    """Not thread-safe: one engine thread drives it. Build a new one to recover from a crash."""

    def __init__(
        self,
        model: LoadedModel,
        settings: EngineSettings,
        tables: StepTables,
        device: torch.device | str | None = None,
        denoiser: Denoiser | None = None,
        on_compiled: OnCompiled | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(model.net.parameters()).device
        manifest = model.manifest
        self.default_variance = manifest.diffusion.variance_type
        self.tables = tables
        self.settings = settings
        self.buckets = bucket_sizes(settings.max_batch, settings.buckets)
        self.num_slots = self.buckets[-1]
        shape = (manifest.image_channels, manifest.image_size, manifest.image_size)
        self.transfers = Transfers(self.device)
        self.slots = SlotTable(self.num_slots, shape, self.device, self.transfers)
        eager = denoiser if denoiser is not None else model.denoiser
        denoise = prepare_denoiser(model, settings, self.device, len(self.buckets), denoiser)
        precision = resolved_precision(settings.precision, self.device)
        tolerance = MAX_ABS_ERROR if precision is Precision.FP32 else MAX_ABS_ERROR_REDUCED
        self.compiler: BackgroundCompiler | None = None
        if compiles_in_background(settings, self.device):
            if denoiser is None:
                threads = settings.threads or machine_threads()
                spec = PackageSpec(model.path, precision.value, threads)
                packages = PackageBuilder(model, spec, compile_cache_dir(settings))
                self.compiler = BackgroundCompiler(
                    denoise,
                    packages,
                    compile_order(settings.buckets or dense_bucket_sizes(self.num_slots)),
                    self._random_inputs,
                    on_compiled,
                    tolerance,
                )
            else:  # a packaged network would run the model's own network, not this wrapper
                log.info("a custom denoiser is served eager: only the model's own network is compiled")
        # Exact (no padding) unless the network needs fixed shapes now: compiled at warm-up, or graphed.
        self.runner = BucketRunner(
            denoise,
            self.buckets,
            shape,
            self.device,
            graph_backend(settings, self.device),
            exact=not compiles_at_warm_up(settings, self.device),
            background=self.compiler,
            reference=eager if denoise is not eager else None,
            inputs=self._random_inputs,
            tolerance=tolerance,
        )
        self._num_classes = manifest.num_classes
        self._num_timesteps = manifest.diffusion.num_timesteps
        self._shape = shape
        self._compiled_seen: frozenset[int] = frozenset()
        self.threads: ThreadSetter | None = None  # CPU only: chosen at warm-up

    def warm_up(self) -> float:
        """Run (compile, capture) every bucket once; returns the seconds it took."""
        start = time.perf_counter()
        self.runner.warm_up(self.settings.warmup_iterations)
        if self.compiler is not None:
            # Before ready, and before threads are chosen: built sizes serve compiled from the first
            # request and are the ones timed.
            self.compiler.load_cached()
            self._compiled_seen = self.compiler.ready
        if self.device.type == "cpu":
            policy = self._thread_policy()
            candidates = sorted(set(policy.threads)) if self.settings.threads else None
            self.threads = ThreadSetter(policy, candidates or range(1, machine_threads() + 1))
        if self.compiler is not None:
            self.compiler.start()  # the sizes not built yet
        seconds = time.perf_counter() - start
        log.info("executor on %s warmed up buckets %s in %.1f s", self.device, self.buckets, seconds)
        return seconds

    def close(self) -> None:
        """Stop compiling in the background (a compile under way finishes on its own daemon thread)."""
        if self.compiler is not None:
            self.compiler.stop()

    def _random_inputs(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs for compiling and checking a batch size: seeded, so a failed check can be replayed."""
        generator = torch.Generator().manual_seed(rows)
        x_t = torch.randn((rows, *self._shape), generator=generator)
        model_t = torch.rand((rows,), generator=generator) * self._num_timesteps
        y = torch.randint(0, self._num_classes or 1, (rows,), generator=generator)
        return x_t.to(self.device), model_t.to(self.device), y.to(self.device)

    @torch.no_grad()
    def _thread_policy(self) -> ThreadPolicy:
        if self.settings.threads is not None:
            return ThreadPolicy.fixed(self.settings.threads, self.num_slots)
        policy = tune(self.runner.probe, self.num_slots)
        log.info(
            "intra-op threads per batch size 1..%d on %s: %s", self.num_slots, self.device, policy.threads
        )
        return policy

    def _swapped_in(self, sizes: frozenset[int]) -> None:
        """Sizes now served compiled: their thread timings were taken eager, so they are measured again."""
        assert self.compiler is not None
        self._compiled_seen = self.compiler.ready
        if self.threads is not None:
            for size in sizes:
                self.threads.forget(size)

    def admit(self, rows: Sequence[RowState]) -> None:
        for row in rows:
            request = row.request
            table = self.tables.get(request.steps, request.sampler)
            self.slots.admit(row, table, request.variance or self.default_variance)

    def replan(self, row: RowState, budget: int) -> bool:
        """Shorten a running row to at most `budget` remaining steps: its own sampler's coarsest schedule
        from its current t that fits, never below its floor (service.diffusion.replan). Returns whether
        it changed (not when even the floor needs more, or the row is at its last steps)."""
        floor = row.request.floor_steps
        steps = row.request.steps
        if floor is None or not isinstance(steps, int):
            return False
        info = self.slots.rows_info([row])[0]
        current = int(info.timesteps[row.cursor])
        sampler = row.request.sampler
        coarse_steps = coarsest_fitting(
            lambda k: self.tables.timesteps(k, sampler).tolist(), current, floor, steps - 1, budget
        )
        if coarse_steps is None:
            return False
        coarse = self.tables.timesteps(coarse_steps, sampler)
        kept = combined_timesteps(info.timesteps.tolist(), row.cursor, coarse.tolist())
        remaining = remaining_steps(current, coarse.tolist())
        if remaining >= row.cursor + 1:
            return False
        self.slots.replace_table(row, self.tables.at(kept))
        row.replan(len(kept), remaining - 1)
        return True

    def release(self, row: RowState) -> None:
        self.slots.release(row)

    @torch.no_grad()
    def step(self, rows: Sequence[RowState]) -> StepOutcome:
        """One network call and one reverse step for every row; cursors move, latents are updated.

        Host <-> device traffic goes through self.transfers: uploads do not wait, and the finiteness
        flags, finished images and previews come back in one download, the step's one sync. The rows'
        noise is drawn on the CPU after the network is launched, so on CUDA it overlaps the UNet (drawn
        for this step, not ahead: which rows run next is the scheduler's decision, made after this)."""
        infos = self.slots.rows_info(rows)
        index = self.transfers.upload([row.slot for row in rows], torch.long)
        x_t = self.slots.latents.index_select(0, index)
        c = self.slots.coefficients(rows, infos)
        if self.compiler is not None and self.compiler.ready is not self._compiled_seen:
            self._swapped_in(self.compiler.ready - self._compiled_seen)
        threads = self.threads.before_call(len(rows)) if self.threads is not None else 0
        start = time.perf_counter()
        bucket, eps, v = self.runner(x_t, c.model_t, self.slots.labels(infos))
        if self.threads is not None:  # CPU: the call is synchronous, so this is the network's time
            self.threads.after_call(len(rows), threads, time.perf_counter() - start)
        noise = self.slots.noise(infos)  # drawn at every step, the last included, as the reference does
        out = mixed_step(
            [info.sampler for info in infos],
            x_t,
            eps,
            v,
            c,
            noise,
            self.slots.options(infos),
            self.slots.samplers_state(infos, index),
        )
        x_next = out.x_prev
        self.slots.latents.index_copy_(0, index, x_next)
        for name, tensor in out.state.items():
            self.slots.state[name].index_copy_(0, index, tensor)
        for row in rows:
            row.cursor -= 1
            row.draws += 1
        done = [i for i, row in enumerate(rows) if row.cursor < 0]
        due = [i for i, row in enumerate(rows) if row.preview_due]
        # eps and v are checked too: an infinite eps is clipped away in x0 and would not show in x.
        finite_flags, finished, previews = self.transfers.download(
            finite_rows(eps, v, x_next), self._rows_of(x_next, done), self._rows_of(out.pred_xstart, due)
        )
        finite = finite_flags.tolist()
        outcome = StepOutcome(bucket, non_finite=[row for i, row in enumerate(rows) if not finite[i]])
        if done:
            images = to_uint8(finished)
            outcome.finished = [(rows[i], images[j]) for j, i in enumerate(done) if finite[i]]
        if due:  # only rows that asked pay for the copy
            pixels = to_uint8(previews)
            outcome.previews = {rows[i]: pixels[j] for j, i in enumerate(due) if finite[i]}
        return outcome

    def _rows_of(self, tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """tensor[rows], gathered on the device (an empty batch when no row is wanted)."""
        if not rows:
            return tensor[:0]
        return tensor.index_select(0, self.transfers.upload(rows, torch.long))


def graph_backend(settings: EngineSettings, device: torch.device) -> GraphBackend | None:
    """CUDA graphs on CUDA when asked; the emulation where settings ask for it (tests, dry runs)."""
    if settings.emulate_graphs:
        return EmulatedGraphs()
    if settings.cuda_graphs and device.type == "cuda":
        return CudaGraphs(device)
    return None


def compile_cache_dir(settings: EngineSettings) -> Path:
    """Where compiled packages are kept: the configured folder, else one per user under the system's
    temporary folder (kept across restarts of the server, not across reboots)."""
    if settings.compile_cache_dir is not None:
        return Path(settings.compile_cache_dir)
    return Path(tempfile.gettempdir()) / f"ddpm-serve-compiled-{getpass.getuser()}"


def compile_order(sizes: Sequence[int]) -> tuple[int, ...]:
    """The largest size first (a saturated server runs it almost always), then one row (an idle server's
    requests), then the rest from large to small (a larger size saves more per call)."""
    ordered = sorted(set(sizes), reverse=True)
    first = [ordered[0], *([1] if 1 in ordered[1:] else [])]
    return (*first, *(size for size in ordered if size not in first))


def finite_rows(*tensors: torch.Tensor | None) -> torch.Tensor:
    """[B] bool: True where every element of the row is finite in every tensor given."""
    ok: torch.Tensor | None = None
    for tensor in tensors:
        if tensor is None:
            continue
        row_ok = torch.isfinite(tensor).flatten(1).all(dim=1)
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None, "finite_rows needs at least one tensor"
    return ok
