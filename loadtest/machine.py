"""What the numbers were measured on, and the random benchmark model's folder.

Absolute timings on a shared 2-core machine are noisy, so the report records the machine, the load
average around each phase and whether a training run shared the CPU; the bars are ratios measured side by
side in one run. The model folder is written by the `ddpm init` command line in a child process, so this
harness never loads a network itself (bench/model.py loads it for the in-process benchmarks).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH_PRESET = "fmnist-small"  # the bundled model's architecture: same compute, but weights nobody rewrites
TORCH_THREADS = 1


def pin_threads(threads: int = TORCH_THREADS) -> None:
    """One intra-op thread in this process too, as in the servers it is compared with."""
    torch.set_num_threads(threads)


def ddpm_command() -> list[str]:
    """The `ddpm` offline command line of this environment."""
    script = Path(sys.executable).parent / "ddpm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli.ddpm"]


def random_model_dir(preset: str = BENCH_PRESET, out_dir: Path | None = None) -> Path:
    """A randomly initialised model folder (seed 0), written by `ddpm init --preset NAME` unless present."""
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="ddpm-bench-")) / preset
    if not (out_dir / "model.json").is_file():
        command = [*ddpm_command(), "init", "--preset", preset, "--out", str(out_dir), "--seed", "0"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out_dir


def load_average() -> float:
    return os.getloadavg()[0]


def training_running() -> bool:
    """Whether a `ddpm train` process shares the machine (read-only look at /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"ddpm") for a in args) and b"train" in args:
            return True
    return False


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    python: str
    torch: str
    torch_threads: int
    training_running: bool
    load_average: float

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("CPU", f"{self.cpu}, {self.cores} cores, {self.memory_gib:.0f} GiB RAM, no GPU"),
            ("Software", f"Python {self.python}, torch {self.torch} (CPU)"),
            ("torch threads", f"{self.torch_threads} intra-op thread in every benchmark process and server"),
            (
                "Other load",
                f"`ddpm train` running: {'yes' if self.training_running else 'no'}; 1-min load average at "
                f"start {self.load_average:.2f}",
            ),
        ]


def describe() -> Machine:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        memory_gib=pages / 2**30,
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        training_running=training_running(),
        load_average=load_average(),
    )
