"""The benchmark models, loaded in this process (the in-process benchmarks run their networks).

The performance report runs on the bundled model: its compute is the random preset's, its compiled
packages are the ones a default server builds for it (so the report measures what a user gets), and the
latency-budget scenario needs its calibration. The random model stays for runs that must not depend on
model_store/ (tests)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from loadtest.machine import BENCH_PRESET
from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, random_model_dir

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-small"


def bundled_model() -> tuple[Path, LoadedModel]:
    return BUNDLED_MODEL, load_model(BUNDLED_MODEL)


def random_model(preset: str = BENCH_PRESET, out_dir: Path | None = None) -> tuple[Path, LoadedModel]:
    """A randomly initialised model folder (what `ddpm init --preset NAME` writes) and it, loaded."""
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="ddpm-bench-")) / preset
    if not (out_dir / "model.json").is_file():
        random_model_dir(get_preset(preset), out_dir, seed=0)
    return out_dir, load_model(out_dir)
