"""Settings of a training run, saved with its checkpoints so a resumed run cannot drift."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Objective = Literal["hybrid", "vlb"]


class TrainConfigError(ValueError):
    """Training settings that cannot work; the message names the option."""


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "fmnist-small"
    name: str = "fmnist-small"
    steps: int = 20_000
    batch_size: int = 64
    lr: float = 3e-4
    ema_decay: float = 0.999
    seed: int = 0
    objective: Objective = "hybrid"  # hybrid: L_simple + 0.001 L_vlb; vlb: L_vlb with importance sampling
    bf16: bool = True  # CPU autocast: faster where the CPU has native bf16, far slower where it is emulated
    checkpoint_every: int = 500
    data_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise TrainConfigError(f"--lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise TrainConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.objective not in ("hybrid", "vlb"):
            raise TrainConfigError(f"--objective must be hybrid or vlb, got {self.objective!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_bf16(precision: str, saved: TrainConfig | None) -> bool:
    """`--precision` made concrete: auto keeps a resumed run's own choice, else bf16 where it is native.

    bf16 autocast roughly halves a step where the CPU computes bf16 natively (AMX / AVX512-BF16) and makes
    it about ten times slower where oneDNN emulates it (bench/train_speed.py, docs/quality.md); a resumed
    run keeps its precision because the saved settings must match.
    """
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if precision != "auto":
        raise TrainConfigError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    if saved is not None:
        return saved.bf16
    from service.engine.compile import native_bf16

    return native_bf16()
