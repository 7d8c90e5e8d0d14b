"""`ddpm-serve`: the HTTP server (embedded engine, the bundled model, CPU when there is no GPU).

Every setting comes from DDPM_* environment variables (service.api.settings); the few flags below override
them. argparse rather than pydantic-settings' CLI source: that one would turn every setting into a flag
named after the field (--model_dirs), where these are the handful people type.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.api.app import create_app
from service.api.settings import Settings, SettingsError
from service.engine.threads import confine_to_one_thread


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ddpm-serve", description="Serve Improved DDPM models over HTTP (see /docs once started)."
    )
    parser.add_argument("--host", help="bind address (DDPM_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (DDPM_PORT, default 8000)")
    parser.add_argument(
        "--model",
        dest="model_dirs",
        action="append",
        metavar="DIR",
        help="model folder to serve; repeat for several (DDPM_MODEL_DIRS, default model_store/fmnist-small)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="DDPM_DEVICE, default auto")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    confine_to_one_thread()  # the event loop's thread: only the engine thread may own an OpenMP team
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except (ValidationError, SettingsError) as e:
        print(f"ddpm-serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, waits up to the drain timeout for in-flight
    # requests, then runs the app's shutdown (which drains the engine queues). Afterwards it restores the
    # previous handlers and raises the signal again; these handlers make that a plain exit with status 0
    # (the shutdown it asked for is complete) instead of death by SIGTERM or a KeyboardInterrupt trace.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _after_graceful_shutdown)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=round(settings.drain_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


def _after_graceful_shutdown(signum: int, frame: object) -> None:
    logging.getLogger(__name__).info("stopped on %s", signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
