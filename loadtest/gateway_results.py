"""The gateway-capacity bench's results (loadtest.gateway_capacity): its measured windows, the py-spy
profile of the gateway summarised, and the markdown of docs/gateway-capacity.md.

The profile is `py-spy record --gil` in py-spy's raw format (one collapsed stack and its sample count a
line): only threads holding the GIL are sampled, so idle waits in epoll or on a condition are left out,
and it is tabulated by the package of the running frame, by running function, and by the project's own
functions with everything they call.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loadtest import report

FORMATS = ("json", "png")
STEPS = 10
GOAL_MS = 1.0  # CPU per request: 1,000 requests/s per gateway core


@dataclass(frozen=True)
class Window:
    gateway: str
    response_format: str
    ok: int
    wall_s: float
    gateway_cpu_s: float
    threads_cpu_s: dict[str, float]
    workers_cpu_s: float
    driver_cpu_s: float
    load_average: tuple[float, float]

    @property
    def ms_per_request(self) -> float:
        return 1000 * self.gateway_cpu_s / max(1, self.ok)


@dataclass(frozen=True)
class ProfileSummary:
    """py-spy's samples of the gateway's threads while they held the GIL (Python running, not waiting)."""

    samples: int
    packages: list[tuple[str, int]]  # the package of the running frame (self time)
    functions: list[tuple[str, int]]  # the running function (self time)
    ours: list[tuple[str, int]]  # a function of service/ anywhere on the stack (inclusive)

    def markdown(self, title: str) -> str:
        def rows(entries: list[tuple[str, int]]) -> list[tuple[str, str]]:
            return [(f"`{name}`", f"{100 * n / max(1, self.samples):.1f} %") for name, n in entries]

        return "\n\n".join(
            (
                f"### {title}",
                f"{self.samples} samples of the gateway's threads holding the GIL (py-spy --gil); the "
                "shares are of the Python time, mostly the event loop's.",
                report.table(["Package of the running frame (self)", "share"], rows(self.packages)),
                report.table(["Running function (self)", "share"], rows(self.functions)),
                report.table(["Our function on the stack (inclusive)", "share"], rows(self.ours)),
            )
        )


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's 'name (path/file.py:12)' -> ('name (dir/file.py)', its package)."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        package = parts[parts.index("site-packages") + 1]
    elif "service" in parts:
        package = ".".join(parts[parts.index("service") : -1])
    elif len(parts) >= 2:  # the standard library: its package, or its module when it has none
        package = "stdlib " + (Path(parts[-1]).stem if parts[-2].startswith("python3") else parts[-2])
    else:
        package = path  # <string>, <frozen abc>
    return f"{name} ({'/'.join(parts[-2:])})", package


def summarize(collapsed: str, top: int = 15) -> ProfileSummary:
    """py-spy's raw (collapsed) output: 'frame;frame;...;innermost count' per line."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if f.endswith(")") and " (" in f]
        if not frames or not count.isdigit():
            continue
        functions[frames[-1][0]] += int(count)
        packages[frames[-1][1]] += int(count)
        ours.update(
            dict.fromkeys({name for name, package in frames if package.startswith("service")}, int(count))
        )
    return ProfileSummary(
        sum(functions.values()),
        packages.most_common(top),
        functions.most_common(top),
        ours.most_common(2 * top),
    )


@dataclass(frozen=True)
class CapacityResult:
    windows: list[Window]
    requests: int
    concurrency: int
    workers: int
    profiles: dict[str, ProfileSummary]  # response format -> the current gateway's profile
    others: list[tuple[str, float]]  # other processes' CPU seconds during the run
    seconds: float

    def of(self, gateway: str, response_format: str) -> list[Window]:
        return [w for w in self.windows if (w.gateway, w.response_format) == (gateway, response_format)]

    def median_ms(self, gateway: str, response_format: str) -> float:
        return statistics.median(w.ms_per_request for w in self.of(gateway, response_format))

    def markdown(self, header: str) -> str:
        gateways = list(dict.fromkeys(w.gateway for w in self.windows))
        current = gateways[-1]
        worst = max(self.median_ms(current, f) for f in FORMATS)
        parts = [
            header,
            f"Each window: {self.requests} requests (class label, K={STEPS}, one image, a fixed seed) on "
            f"{self.concurrency} keep-alive connections to one gateway over {self.workers} instant "
            "tritonserver worker(s); every answer was a 200. The gateways' windows alternate, format "
            "by format.",
            "## CPU per request\n\nMedian over the windows (ms of gateway CPU per request; one gateway "
            "core serves 1000 ÷ it requests/s):",
            report.table(
                ["Gateway", *FORMATS, *(f"requests/s here ({f})" for f in FORMATS)],
                [
                    (
                        g,
                        *(f"**{self.median_ms(g, f):.3f}**" for f in FORMATS),
                        *(
                            f"{statistics.median(w.ok / w.wall_s for w in self.of(g, f)):.0f}"
                            for f in FORMATS
                        ),
                    )
                    for g in gateways
                ],
            ),
            *self._ratios(gateways),
            report.bar(
                f"≤ {GOAL_MS:g} ms CPU per request ({current})",
                worst <= GOAL_MS,
                f"worst format {worst:.3f} ms: {1000 / worst:.0f} requests/s per gateway core",
            ),
            self._threads(gateways),
            "## Every window\n\n" + self._windows(),
        ]
        others = ", ".join(f"`{command}` {seconds:.0f} s" for command, seconds in self.others) or "nothing"
        parts.append(
            "## What else ran\n\nThe load generator (this process) and the instant workers (tritonserver and "
            "its Python-backend stub) share the machine's cores with the gateway; so does anything else "
            f"running. CPU seconds of other processes over the whole run: {others}. Contention lowers "
            "requests/s here, which is therefore not the measure, and moves CPU per request both ways "
            "(cache misses and preempted lock hand-offs, but also more events per wake-up of the event "
            "loop): compare gateways within one run. The "
            "gateway's CPU includes its once-a-second health check of each worker, spread over the "
            "window's requests."
        )
        for response_format, summary in self.profiles.items():
            parts.append(summary.markdown(f"Profile of the {current} gateway, {response_format}"))
        parts.append(f"Whole benchmark: {self.seconds / 60:.1f} min.")
        return "\n\n".join(parts) + "\n"

    def _ratios(self, gateways: list[str]) -> list[str]:
        """Current ÷ each baseline, the median of the ratios of windows measured back to back."""
        rows = []
        for baseline in gateways[:-1]:
            ratios = [
                statistics.median(
                    now.ms_per_request / then.ms_per_request
                    for then, now in zip(self.of(baseline, f), self.of(gateways[-1], f), strict=True)
                )
                for f in FORMATS
            ]
            rows.append((f"{gateways[-1]} ÷ {baseline}", *(f"{r:.3f}" for r in ratios)))
        if not rows:
            return []
        return [
            "CPU per request, current ÷ baseline (median over rounds of the ratio of the two windows "
            "measured back to back, which cancels the machine's drifting load):",
            report.table(["", *FORMATS], rows),
        ]

    def _threads(self, gateways: list[str]) -> str:
        totals: dict[str, float] = {}
        for w in self.windows:
            for name, seconds in w.threads_cpu_s.items():
                totals[name] = totals.get(name, 0.0) + seconds
        groups = [name for name in sorted(totals, key=lambda n: -totals[n]) if totals[name] > 0]
        rows = []
        for gateway in gateways:
            for response_format in FORMATS:
                windows = self.of(gateway, response_format)
                ok = sum(w.ok for w in windows)
                total = {g: sum(w.threads_cpu_s.get(g, 0.0) for w in windows) for g in groups}
                rows.append((gateway, response_format, *(f"{1000 * total[g] / ok:.3f}" for g in groups)))
        return (
            "By thread (ms CPU per request over all windows; CPython leaves its threads the process's "
            "name, so tritonclient's stream threads and any worker pool are 'other Python threads'):\n\n"
            + report.table(["Gateway", "Format", *groups], rows)
        )

    def _windows(self) -> str:
        """Every window; the workers' and the load generator's CPU per request too (never counted in
        the gateway's): a worker far below the gateway means one worker is enough to load it."""
        return report.table(
            [
                "Gateway",
                "Format",
                "gateway ms CPU / request",
                "workers'",
                "load generator's",
                "requests/s",
                "load average",
            ],
            [
                (
                    w.gateway,
                    w.response_format,
                    f"{w.ms_per_request:.3f}",
                    f"{1000 * w.workers_cpu_s / w.ok:.3f}",
                    f"{1000 * w.driver_cpu_s / w.ok:.3f}",
                    f"{w.ok / w.wall_s:.0f}",
                    f"{w.load_average[0]:.2f} → {w.load_average[1]:.2f}",
                )
                for w in self.windows
            ],
        )
