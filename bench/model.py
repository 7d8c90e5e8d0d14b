"""The random benchmark model, loaded in this process (the in-process benchmarks run its network)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from loadtest.machine import BENCH_PRESET
from service.model.presets import get_preset
from service.model.store import LoadedModel, load_model, random_model_dir


def random_model(preset: str = BENCH_PRESET, out_dir: Path | None = None) -> tuple[Path, LoadedModel]:
    """A randomly initialised model folder (what `ddpm init --preset NAME` writes) and it, loaded."""
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="ddpm-bench-")) / preset
    if not (out_dir / "model.json").is_file():
        random_model_dir(get_preset(preset), out_dir, seed=0)
    return out_dir, load_model(out_dir)
