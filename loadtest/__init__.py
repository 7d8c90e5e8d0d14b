"""Benchmarks of ddpm-serve; `python -m loadtest.bench --out docs/performance.md` runs them all.

Outside `tests/` on purpose: pytest never collects these (they take minutes and measure speed); the smoke
test in tests/loadtest/ checks the driver's bookkeeping only.
"""
