"""The network at a fixed set of batch sizes (buckets), optionally replayed as one CUDA graph per bucket;
or, when nothing needs a fixed shape (eager, no graphs), at exactly the number of active rows.

Why fixed sizes: the number of active rows changes every iteration (rows are admitted and finish at
their own K). A compiled network specialised per shape (dynamic=False) and a CUDA graph, which replays
exactly the kernels and addresses it recorded, both need a shape that does not change. So the active rows
are copied into the first n rows of static input buffers and the batch is padded to the smallest bucket
>= n; the padding rows hold zeros (x = 0, t = 0, label 0), are never read back, and cannot change the real
rows because every layer of the UNet is per-sample (GroupNorm, attention and the embeddings never mix
rows of a batch). The cost is the padded rows' compute, at most just under half of a power-of-two bucket.

On the CPU, compilation happens in the background (background_compile.py) at the dense sizes of
`dense_bucket_sizes`, which bound padding to MAX_PADDING of a call: there each size costs a compile of
its own (about a minute on 2 cores with a cold cache), and a call's time grows with its rows, so sizes
every 1/8 cost 12 compiles for max_batch 16 (16 for every size; 5 for powers of two, which waste up to
44 % at 9 rows: 53 ms compiled at 16 against 34 ms at 9, measured).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from service.diffusion.sampling import Denoiser
from service.engine.background_compile import (
    MAX_ABS_ERROR,
    BackgroundCompiler,
    Inputs,
    max_abs_difference,
)
from service.engine.graphs import CAPTURE_LOCK, Graph, GraphBackend

log = logging.getLogger(__name__)

MAX_PADDING = 1 / 8  # the largest share of a compiled CPU call that may be padding rows


def bucket_sizes(max_batch: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
    """The batch sizes the network runs at: given ones, or powers of two below max_batch, and max_batch."""
    if buckets is not None:
        return tuple(sorted(set(buckets)))
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def dense_bucket_sizes(max_batch: int, max_padding: float = MAX_PADDING) -> tuple[int, ...]:
    """Sizes 1..max_batch such that n rows padded to the next size waste at most max_padding of it.

    After size b the next is the largest b' with (b' - (b + 1)) / b' <= max_padding, i.e.
    b' = floor((b + 1) / (1 - max_padding)), and at least b + 1.
    """
    if not 0 <= max_padding < 1:
        raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size = max(size + 1, math.floor((size + 1) / (1 - max_padding) + 1e-9))
    return (*sizes, max_batch)


def pick_bucket(buckets: Sequence[int], rows: int) -> int:
    """The smallest bucket holding `rows` (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, rows)
    if i == len(buckets):
        raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")
    return buckets[i]


class GraphMismatch(RuntimeError):
    """A captured graph's replay disagrees with the eager network: warm-up fails rather than serve it."""


class BucketRunner:
    """Calls the denoiser at bucket sizes only; with `graphs`, replays a graph captured per bucket.

    `reference` is the eager network when `denoise` is compiled: a bucket whose compile fails at warm-up
    falls back to it (every bucket then runs it, graphed or not, after one warning), and each captured
    graph is checked against it on random inputs (`inputs(rows)`) before it serves.
    """

    def __init__(
        self,
        denoise: Denoiser,
        buckets: Sequence[int],
        shape: tuple[int, ...],
        device: torch.device,
        graphs: GraphBackend | None = None,
        exact: bool = False,
        background: BackgroundCompiler | None = None,
        *,
        reference: Denoiser | None = None,
        inputs: Inputs | None = None,
        tolerance: float = MAX_ABS_ERROR,
    ) -> None:
        self.denoise = denoise
        self.reference = reference
        self.inputs = inputs
        self.tolerance = tolerance
        self.compile_error: str | None = None  # why the compiled network was given up, if it was
        self.buckets = tuple(sorted(buckets))
        self.device = device
        self.graphs = graphs
        # Exact: nothing needs a fixed shape (eager, no graphs), so n rows run as a batch of n; padding
        # would only cost compute (a batch of 9 padded to 16 takes 1.7x as long on the CPU).
        self.exact = exact and graphs is None
        # Exact runs only: sizes compiled in the background take over as they become ready.
        self.background = background if self.exact else None
        largest = self.buckets[-1]
        # Static inputs sliced per bucket: a graph records their addresses, so they are never reallocated.
        self._x = torch.zeros((largest, *shape), dtype=torch.float32, device=device)
        self._t = torch.zeros((largest,), dtype=torch.float32, device=device)
        self._y = torch.zeros((largest,), dtype=torch.long, device=device)
        self._eps: torch.Tensor | None = None  # static outputs, written inside each graph
        self._v: torch.Tensor | None = None
        self._graphs: dict[int, Graph] = {}

    @property
    def cuda_graphs(self) -> bool:
        return self.graphs is not None

    @torch.no_grad()
    def warm_up(self, iterations: int = 2) -> None:
        """Run every bucket (compiling it when the denoiser is compiled), then capture and check graphs.

        Largest first, as nano-vllm does: the graphs share one memory pool, and capturing the largest
        first lets the smaller ones fit in the memory it reserved. Every bucket is compiled before the
        first capture, so a compile failure at any bucket leaves no graph of the compiled network.
        """
        with self._device():
            for bucket in reversed(self.buckets):
                for _ in range(max(1, iterations)):
                    eps, v = self._warm_call(bucket)
            if self.graphs is None:
                return
            self._eps = torch.empty((self.buckets[-1], *eps.shape[1:]), dtype=eps.dtype, device=self.device)
            if v is not None:
                self._v = torch.empty((self.buckets[-1], *v.shape[1:]), dtype=v.dtype, device=self.device)
            pool = None
            for bucket in reversed(self.buckets):
                with CAPTURE_LOCK:
                    graph, pool = self.graphs.capture(functools.partial(self._into_outputs, bucket), pool)
                self._check_replay(bucket, graph)
                self._graphs[bucket] = graph
            self.graphs.synchronize()

    def _warm_call(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One eager call at `bucket` (the first of a compiled network compiles it); on a compile failure
        the eager reference takes over for good, with one warning."""
        try:
            return self._on_capture_stream(bucket)
        except Exception as e:
            if self.reference is None or self.denoise is self.reference:
                raise
            self.compile_error = f"batch {bucket}: {type(e).__name__}: {e}"
            log.warning("compiling the network failed (%s): serving it eager", self.compile_error)
            self.denoise = self.reference
            return self._on_capture_stream(bucket)

    def _on_capture_stream(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.graphs is None:
            return self._eager(bucket)
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.graphs.warm(lambda: out.append(self._eager(bucket)))
        return out[0]

    def _into_outputs(self, bucket: int) -> None:
        """What a graph records: the network on the static inputs, copied into the static outputs (kept
        outside the graphs' shared pool, where another bucket's replay could overwrite them)."""
        assert self._eps is not None
        eps, v = self.denoise(self._x[:bucket], self._t[:bucket], self._y[:bucket])
        self._eps[:bucket].copy_(eps)
        if self._v is not None and v is not None:
            self._v[:bucket].copy_(v)

    def _check_replay(self, bucket: int, graph: Graph) -> None:
        """Replay on random inputs against the eager network: an empty or stale graph (captured on the
        wrong stream, say) returns finite but wrong eps, which no finiteness check would catch."""
        if self.inputs is None:
            return
        x_t, model_t, y = self.inputs(bucket)
        self._fill(x_t, model_t, y, bucket)
        graph.replay()
        assert self._eps is not None
        replayed = (self._eps[:bucket].clone(), None if self._v is None else self._v[:bucket].clone())
        expected = (self.reference or self.denoise)(x_t, model_t, y)
        error = max_abs_difference(replayed, expected)
        if not error <= self.tolerance:  # NaN fails too
            raise GraphMismatch(
                f"the CUDA graph of batch {bucket} on {self.device} differs from the eager network by "
                f"{error:.3g} (limit {self.tolerance:g}); not serving it"
            )
        log.info("graph of batch %d checked on %s (max |replay - eager| %.2g)", bucket, self.device, error)

    def _device(self) -> contextlib.AbstractContextManager[Any]:
        return self.graphs.device_context() if self.graphs is not None else contextlib.nullcontext()

    def probe(self, rows: int) -> None:
        """One call at `rows` rows of the zero inputs (timing the network, e.g. to choose threads)."""
        self(self._x[:rows], self._t[:rows], self._y[:rows])

    def _eager(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.denoise(self._x[:bucket], self._t[:bucket], self._y[:bucket])

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """(bucket, eps [n], v [n] or None) for the n rows given; the padding rows are discarded."""
        n = x_t.shape[0]
        if self.exact:
            pick_bucket(self.buckets, n)  # still refuses more rows than the largest bucket
            size = self._compiled_size(n)
            if size is None:
                eps, v = self.denoise(x_t, model_t, y)
                return n, eps, v
            assert self.background is not None
            self._fill(x_t, model_t, y, size)
            eps, v = self.background.runners[size](self._x[:size], self._t[:size], self._y[:size])
            return size, eps[:n], None if v is None else v[:n]
        bucket = pick_bucket(self.buckets, n)
        graph = self._graphs.get(bucket)
        if graph is None:
            self._fill(x_t, model_t, y, bucket)
            eps, v = self._eager(bucket)
            return bucket, eps[:n], None if v is None else v[:n]
        assert self._eps is not None
        with self._device():
            self._fill(x_t, model_t, y, bucket)
            graph.replay()
            # Cloned: the next replay overwrites the static outputs.
            eps_n = self._eps[:n].clone()
            return bucket, eps_n, None if self._v is None else self._v[:n].clone()

    def _compiled_size(self, rows: int) -> int | None:
        """The compiled size `rows` pads to, if that size is ready; None: run eager at exactly `rows`."""
        if self.background is None or not self.background.ready:
            return None
        size = pick_bucket(self.background.sizes_ascending, rows)
        return size if size in self.background.ready else None

    def _fill(self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None, bucket: int) -> None:
        """The rows into the static inputs, zeros in the padding rows up to `bucket`."""
        n = x_t.shape[0]
        self._x[:n].copy_(x_t)
        self._t[:n].copy_(model_t)
        if y is not None:
            self._y[:n].copy_(y)
        if bucket > n:
            self._x[n:bucket].zero_()
            self._t[n:bucket].zero_()
            self._y[n:bucket].zero_()
