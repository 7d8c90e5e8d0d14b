"""What the worker sets up in its Python-backend stub process, once, before the model loads: its log
records go to Triton's log, and glibc's heap keeps the memory a network call frees for the next call.

Both are process-wide, which is why they are here and not in the engine: the embedded server runs in
ddpm-serve's process, whose logging the API configures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the values pinned by steady_heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks up to this come from the arenas, not fresh mmaps
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # where glibc's own rule ends up once a 32 MiB block was freed


def steady_heap() -> bool:
    """Pin glibc's mmap and trim thresholds for this process; False where the C library is not glibc.

    glibc adapts both to the frees it has seen (the mmap threshold rises to the largest mmapped block
    freed so far, the trim threshold to twice that), so how much of each network call's memory comes
    fresh from the kernel, one page fault per 4 KiB, depends on what the process happened to allocate
    first. Measured with one compiled batch-16 package at one thread on a 2-core AMD EPYC: 2,725 minor
    faults per call inside the stub (9.6 ms of a 113 ms call in the kernel), 440 or 2,836 in a plain
    Python process depending on the order of earlier calls, 0-13 in either with the thresholds pinned;
    at saturation the worker had needed ~9 % more time per row-step than the embedded engine. Memory an
    idle engine no longer uses still goes back: HeapTrimmer's malloc_trim frees the pages of free blocks,
    and an arena's top beyond TRIM_THRESHOLD is returned as before."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    pinned = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not pinned:
        log.warning("mallopt refused the malloc thresholds; the heap adapts them as glibc does by default")
    return pinned


class TritonLogHandler(logging.Handler):
    """Python log records of the worker's code to Triton's own log (pb_utils.Logger), where operators
    of a Triton deployment look; the stub has no logging configuration of its own, so without it the
    engine's INFO records (warm-up, compile progress) vanish and its warnings reach only stderr."""

    def __init__(self, logger: Any) -> None:
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.logger.log_error(message)
            elif record.levelno >= logging.WARNING:
                self.logger.log_warn(message)
            else:
                self.logger.log_info(message)
        except Exception:  # logging must never fail the caller (the engine thread)
            self.handleError(record)


def log_to_triton(pb_utils: Any) -> None:
    """Route the `service` loggers to Triton's log (once: a second call adds no second handler)."""
    logger = getattr(pb_utils, "Logger", None)
    root = logging.getLogger("service")
    if logger is None or any(isinstance(h, TritonLogHandler) for h in root.handlers):
        return
    handler = TritonLogHandler(logger)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
