"""What an engine is told at construction. The API layer fills this from its pydantic settings
(env prefix DDPM_); nothing here reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Inductor modes that capture CUDA graphs of their own: nested inside ours (buckets.py) they would record
# graph launches into a graph, or fight over the same static buffers. "max-autotune-no-cudagraphs" is the
# autotuning mode without them.
GRAPH_COMPILE_MODES = frozenset({"reduce-overhead", "max-autotune"})


class Precision(StrEnum):
    AUTO = "auto"  # fp16 torso on CUDA; bf16 on a CPU with native bf16 (AMX / AVX512-BF16), else fp32
    FP32 = "fp32"
    FP16 = "fp16"  # CUDA only
    BF16 = "bf16"


@dataclass(frozen=True)
class EngineSettings:
    max_batch: int = 16  # slots per executor = rows in flight = the largest bucket
    buckets: tuple[int, ...] | None = None  # None: 1, 2, 4, ... up to max_batch (max_batch included)
    max_queue: int = 256  # rows waiting for a slot; beyond it submit raises QueueFull
    run_to_completion: bool = False  # benchmark baseline: admit only into an empty executor
    precision: Precision = Precision.AUTO
    # Compile the network. CUDA: torch.compile(dynamic=False) per bucket at warm-up. CPU: packages built
    # in the background while serving eager (background_compile.py). None: on for CUDA only.
    compile: bool | None = None
    compile_cache_dir: str | None = None  # CPU packages; None: a per-user folder in the temp directory
    # CPU only. False: torch.compile at warm-up, as on CUDA (readiness waits for it; tests of that path).
    compile_in_background: bool = True
    compile_backend: str = "inductor"
    compile_mode: str | None = None  # e.g. "max-autotune-no-cudagraphs"; graphs are captured by us
    cuda_graphs: bool = True  # one CUDA graph per bucket (CUDA only)
    # Tests and `bench.gpu_check --dry-run`: the graph path on any device, a captured body replayed by
    # running it again (service.engine.graphs.EmulatedGraphs). Never for serving.
    emulate_graphs: bool = False
    table_cache_size: int = 64  # coefficient tables kept for distinct step budgets
    warmup_iterations: int = 2  # eager calls per bucket before capture (compilation, cuDNN selection)
    # Intra-op threads of the engine thread on the CPU. None: measured per batch size at warm-up
    # (service.engine.threads); a number fixes it for every batch. Ignored on CUDA.
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.compile_mode in GRAPH_COMPILE_MODES:
            raise ValueError(
                f"compile_mode {self.compile_mode!r} captures CUDA graphs of its own, which would nest "
                "inside the engine's per-bucket graphs; use None, 'default' or 'max-autotune-no-cudagraphs'"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.buckets is not None:
            if not self.buckets or min(self.buckets) < 1:
                raise ValueError(f"buckets must be positive batch sizes, got {self.buckets}")
            if max(self.buckets) != self.max_batch:
                raise ValueError(f"the largest bucket must equal max_batch={self.max_batch}")
