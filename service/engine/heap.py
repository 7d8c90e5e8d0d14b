"""Give freed heap memory back to the operating system when the engine goes idle.

glibc keeps memory that Python, torch and the HTTP stack free in its arenas (one per thread that
allocates: the engine loop, the event loop, OpenMP workers), and returns it only when the free space sits
at the top of an arena. So the resident set of a CPU server is the high-water mark of whatever the largest
recent burst needed, plus fragmentation, not what it holds now: measured here
(`loadtest/rss_peaks.py`), RSS moved by up to ±16 MiB between identical bursts, and in a 30-minute soak it
stepped up 19 MiB at one congested minute and stayed there. An operator watching RSS, or an OOM killer
enforcing a container limit, sees that retained memory as use. `malloc_trim(0)` hands every free page of
every arena back (madvise), so once the engine has been idle for a moment the resident set is what is live.

It runs on the engine thread once the engine has had no work for `min_idle_s` (half a second), at most
once per idle period, so a busy server never pays for it; a request arriving during a trim waits for it
(milliseconds: `HeapTrimmer.seconds` keeps the last duration).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library is not glibc (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


MIN_IDLE_S = 0.5


class HeapTrimmer:
    """Trims once per idle period: `busy()` whenever there is work, `idle()` whenever there is none; the
    trim happens in the first `idle()` at least `min_idle_s` after the last `busy()`."""

    def __init__(
        self,
        trim: Callable[[int], int] | None = None,
        min_idle_s: float = MIN_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self.min_idle_s = min_idle_s
        self._clock = clock
        self._last_busy = clock()
        self._trimmed = False  # since the last work
        self.trims = 0
        self.seconds = 0.0  # duration of the last trim

    @property
    def available(self) -> bool:
        return self._trim is not None

    def busy(self) -> None:
        self._last_busy = self._clock()
        self._trimmed = False

    def idle(self) -> None:
        if self._trim is None or self._trimmed or self._clock() - self._last_busy < self.min_idle_s:
            return
        self._trimmed = True
        start = time.perf_counter()
        try:
            self._trim(0)
        except Exception:  # never worth failing the engine over
            log.exception("malloc_trim failed; freed memory stays with the allocator")
            self._trim = None
            return
        self.seconds = time.perf_counter() - start
        self.trims += 1
