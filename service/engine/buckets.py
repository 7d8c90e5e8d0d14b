"""The network at a fixed set of batch sizes (buckets), optionally replayed as one CUDA graph per bucket;
or, when nothing needs a fixed shape (eager, no graphs), at exactly the number of active rows.

Why fixed sizes: the number of active rows changes every iteration (rows are admitted and finish at
their own K). A compiled network specialised per shape (dynamic=False) and a CUDA graph, which replays
exactly the kernels and addresses it recorded, both need a shape that does not change. So the active rows
are copied into the first n rows of static input buffers and the batch is padded to the smallest bucket
>= n; the padding rows hold zeros (x = 0, t = 0, label 0), are never read back, and cannot change the real
rows because every layer of the UNet is per-sample (GroupNorm, attention and the embeddings never mix
rows of a batch). The cost is the padded rows' compute, at most just under half of a power-of-two bucket.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from service.diffusion.sampling import Denoiser


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


def pick_bucket(buckets: Sequence[int], rows: int) -> int:
    """The smallest bucket holding `rows` (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, rows)
    if i == len(buckets):
        raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")
    return buckets[i]


class BucketRunner:
    """Calls the denoiser at bucket sizes only; with `cuda_graphs`, replays a graph captured per bucket."""

    def __init__(
        self,
        denoise: Denoiser,
        buckets: Sequence[int],
        shape: tuple[int, ...],
        device: torch.device,
        cuda_graphs: bool = False,
        exact: bool = False,
    ) -> None:
        self.denoise = denoise
        self.buckets = tuple(sorted(buckets))
        self.device = device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        # Exact: nothing needs a fixed shape (eager, no graphs), so n rows run as a batch of n; padding
        # would only cost compute (a batch of 9 padded to 16 takes 1.7x as long on the CPU).
        self.exact = exact and not self.cuda_graphs
        largest = self.buckets[-1]
        # Static inputs sliced per bucket: a graph records their addresses, so they are never reallocated.
        self._x = torch.zeros((largest, *shape), dtype=torch.float32, device=device)
        self._t = torch.zeros((largest,), dtype=torch.float32, device=device)
        self._y = torch.zeros((largest,), dtype=torch.long, device=device)
        self._eps: torch.Tensor | None = None  # static outputs, written inside each graph
        self._v: torch.Tensor | None = None
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    @torch.no_grad()
    def warm_up(self, iterations: int = 2) -> None:
        """Run every bucket (compiling it when the denoiser is compiled), then capture its graph.

        Largest first, as nano-vllm does: the graphs share one memory pool, and capturing the largest
        first lets the smaller ones fit in the memory it reserved.
        """
        pool = None
        for bucket in reversed(self.buckets):
            for _ in range(max(1, iterations)):
                eps, v = self._eager(bucket)
            if not self.cuda_graphs:
                continue
            if self._eps is None:
                self._eps = torch.empty(
                    (self.buckets[-1], *eps.shape[1:]), dtype=eps.dtype, device=self.device
                )
                if v is not None:
                    self._v = torch.empty((self.buckets[-1], *v.shape[1:]), dtype=v.dtype, device=self.device)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                eps, v = self.denoise(self._x[:bucket], self._t[:bucket], self._y[:bucket])
                # Copied into buffers allocated outside the graph pool: the graphs share that pool, so
                # an output left inside it could be overwritten by the replay of another bucket.
                self._eps[:bucket].copy_(eps)
                if self._v is not None and v is not None:
                    self._v[:bucket].copy_(v)
            pool = graph.pool()
            self._graphs[bucket] = graph
        if self.cuda_graphs:
            torch.cuda.synchronize(self.device)

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
            eps, v = self.denoise(x_t, model_t, y)
            return n, eps, v
        bucket = pick_bucket(self.buckets, n)
        self._x[:n].copy_(x_t)
        self._t[:n].copy_(model_t)
        if y is not None:
            self._y[:n].copy_(y)
        if bucket > n:
            self._x[n:bucket].zero_()
            self._t[n:bucket].zero_()
            self._y[n:bucket].zero_()
        graph = self._graphs.get(bucket)
        if graph is None:
            eps, v = self._eager(bucket)
            return bucket, eps[:n], None if v is None else v[:n]
        assert self._eps is not None
        graph.replay()
        # Cloned: the next replay overwrites the static outputs.
        eps_n = self._eps[:n].clone()
        return bucket, eps_n, None if self._v is None else self._v[:n].clone()
