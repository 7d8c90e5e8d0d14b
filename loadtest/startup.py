"""Start-up to /readyz with default settings: with the compiled packages already built (a restart), and
with an empty package cache (a first start; the server is ready on eager and compiles in the background).

    python -m loadtest.startup
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import report
from loadtest.machine import random_model_dir
from loadtest.server import Server, ServerConfig

BAR_S = 60.0


@dataclass(frozen=True)
class Startup:
    seconds: float
    compiled_at_ready: float  # batch sizes serving compiled when /readyz first answered 200


@dataclass(frozen=True)
class StartupResult:
    restart: Startup
    first: Startup

    @property
    def met(self) -> bool:
        return max(self.restart.seconds, self.first.seconds) <= BAR_S

    def markdown(self) -> str:
        return "\n\n".join(
            [
                "## Start-up to /readyz (default settings)",
                "Process start (`ddpm-serve`) to the first 200 from /readyz, the CPU engine's warm-up "
                "included (threads chosen per batch size, every bucket run once).",
                report.table(
                    ["Start", "to /readyz", "batch sizes compiled at that moment"],
                    [
                        (
                            "package cache filled (a restart)",
                            report.seconds(self.restart.seconds),
                            f"{self.restart.compiled_at_ready:.0f}",
                        ),
                        (
                            "empty package cache (a first start)",
                            report.seconds(self.first.seconds),
                            f"{self.first.compiled_at_ready:.0f} (the rest build in the background)",
                        ),
                    ],
                ),
                report.bar(
                    f"start-up ≤ {BAR_S:.0f} s",
                    self.met,
                    f"worst {max(self.restart.seconds, self.first.seconds):.1f} s",
                ),
            ]
        )


def _start(config: ServerConfig) -> Startup:
    start = time.perf_counter()
    with Server(config) as server:
        seconds = time.perf_counter() - start
        compiled = server.metrics().value("ddpm_compiled_batch_sizes")
    return Startup(seconds, compiled)


def run(model_dir: Path) -> StartupResult:
    restart = _start(ServerConfig(model_dir))
    with tempfile.TemporaryDirectory(prefix="ddpm-empty-cache-") as empty:
        first = _start(ServerConfig(model_dir, compile_cache_dir=Path(empty)))
    return StartupResult(restart, first)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(run(random_model_dir()).markdown())


if __name__ == "__main__":
    main()
