"""The raw UNet ceiling of a model folder, measured by `python -m bench.ceiling --json` in a child process.

loadtest speaks HTTP only and never loads a network; a scenario run alone that sizes its arrival rate from
the raw ceiling (mixed_latency, overload) asks bench for the number through its command line instead.
The child pins one torch thread, as every benchmark process does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evals_per_s_median(model_dir: Path, batch: int = 16, calls: int = 30) -> float:
    """images x steps per second from the median call of `calls` forward calls at `batch`."""
    command = [sys.executable, "-m", "bench.ceiling", "--model", str(model_dir), "--json"]
    command += ["--batch", str(batch), "--calls", str(calls)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["evals_per_s_median"])
