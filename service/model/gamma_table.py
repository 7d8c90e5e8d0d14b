"""gamma.json: a model's Gamma_t = E ||eps_theta(x_t, t)||^2 / d, what analytic variance is derived from.

Written by `ddpm gamma` (service.quality.gamma) beside model.json and tradeoff.json: Monte Carlo
estimates at a grid of training steps, with the sample count, seed and data they came from. The grid
is interpolated linearly to every t = 0..T-1 (Gamma is smooth in t; the grid is dense enough that the
interpolation error is below the Monte Carlo error, see docs/quality.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GAMMA_FILE = "gamma.json"
MAKE_COMMAND = "ddpm gamma --model <model folder>"


class GammaTableError(ValueError):
    """A gamma.json that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class GammaTable:
    timesteps: tuple[int, ...]  # training steps estimated, increasing, including 0 and T-1
    gamma: tuple[float, ...]  # Gamma_t at those steps
    num_timesteps: int  # T of the model
    samples_per_step: int
    seed: int
    data: str  # what x0 was drawn from

    def per_step(self) -> np.ndarray:
        """Gamma_t for every t = 0..T-1 (float64 [T])."""
        return np.interp(np.arange(self.num_timesteps), self.timesteps, self.gamma)


def read_gamma(model_dir: Path, num_timesteps: int) -> GammaTable | None:
    """The model's table, or None when it has none; raises GammaTableError for a broken one."""
    path = Path(model_dir) / GAMMA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        table = GammaTable(
            timesteps=tuple(int(t) for t in data["timesteps"]),
            gamma=tuple(float(g) for g in data["gamma"]),
            num_timesteps=int(data["num_timesteps"]),
            samples_per_step=int(data["samples_per_step"]),
            seed=int(data["seed"]),
            data=str(data["data"]),
        )
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
        raise GammaTableError(f"{path}: not a valid Gamma table ({e})") from None
    steps = table.timesteps
    if table.num_timesteps != num_timesteps or len(steps) != len(table.gamma) or len(steps) < 2:
        raise GammaTableError(f"{path}: made for T={table.num_timesteps}, the model has T={num_timesteps}")
    if steps[0] != 0 or steps[-1] != num_timesteps - 1 or list(steps) != sorted(set(steps)):
        raise GammaTableError(f"{path}: timesteps must increase from 0 to T-1={num_timesteps - 1}")
    if not all(np.isfinite(table.gamma)):
        raise GammaTableError(f"{path}: Gamma has non-finite entries")
    return table


def write_gamma(model_dir: Path, table: GammaTable) -> Path:
    path = Path(model_dir) / GAMMA_FILE
    path.write_text(json.dumps(asdict(table), indent=2) + "\n", encoding="utf-8")
    return path
