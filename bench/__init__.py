"""In-process microbenchmarks of ddpm-serve: they import the engine and the model directly.

- bench/ceiling.py: the raw batched UNet throughput (the ceiling a served engine is compared with);
- bench/engine_step.py: one engine iteration vs one raw forward, alternating;
- bench/gpu_check.py (and gpu_section.py): fp16 + compile + CUDA graphs vs fp32 eager on a GPU;
- bench/served_vs_ceiling.py and bench/idle_vs_bare.py: the bars that divide an HTTP number by an
  in-process one, (a) served ÷ raw ceiling and (c) HTTP idle ÷ bare loop;
- bench/performance.py: runs everything and writes docs/performance.md.

Imports point one way: bench uses loadtest's HTTP harness and scenarios (server launcher, driver, probes,
reports); loadtest never imports bench, the engine or the backends. A loadtest command that only needs
an in-process number as a default (the raw ceiling that sizes mixed_latency's and overload's arrival
rates) runs `python -m bench.ceiling --json` in a child process instead. Outside `tests/` on purpose:
pytest never collects these (they take minutes and measure speed).
"""
