"""HTTP load scenarios of ddpm-serve and their harness: they talk to a server over HTTP only.

The harness (driver, server launcher, probes, machine info, reports) and the scenarios (throughput at
saturation, mixed-K latency, overload, idle request, replay of any workload, gateway over Triton). Nothing
here imports the engine, the backends or bench/; the in-process microbenchmarks, and the orchestrator that
divides served numbers by in-process ones, live in bench/ (`python -m bench.performance --out
docs/performance.md` runs everything). Outside `tests/` on purpose: pytest never collects these (they take
minutes and measure speed); tests/loadtest/ checks the driver's bookkeeping and the replay command only.
"""
