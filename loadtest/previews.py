"""What previews cost: served throughput at saturation with previews on vs off, side by side in one run.

Both sides stream (stream=true), so the only difference is the `preview` events: every image of the "on"
side asks `preview_every=1`, the most a client can ask, which the server raises to K/MAX_PREVIEWS (at
most 20 previews an image: the K = 10 images of the mix get 9, the K = 100 ones 19). Each side is a
fresh default server on the bundled model, saturated by 32 closed-loop clients over K uniform in
{10, 25, 50, 100}, as the served-throughput benchmark does. The sides alternate, `--pairs` times, so a
slow spell of this noisy machine falls on both; the ratio is taken of the summed images.

Bar (issue 16): previews on >= 0.95 x previews off.

    python -m loadtest.previews --out docs/previews.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtest import report, throughput
from loadtest.adaptive import BUNDLED
from loadtest.machine import load_average, pin_threads

BAR = 0.95
WARMUP_S = 15.0
WINDOW_S = 60.0


def streamed(_: int) -> dict[str, object]:
    return {"stream": True}


def previewed(_: int) -> dict[str, object]:
    return {"stream": True, "preview_every": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pin_threads()
    start_load = load_average()
    runs: dict[str, list[throughput.Served]] = {"off": [], "on": []}
    for pair in range(args.pairs):
        for side, fields in (("off", streamed), ("on", previewed)):
            served = throughput.run(
                BUNDLED, warmup_s=WARMUP_S, window_s=WINDOW_S, seed=pair + 1, fields=fields
            )
            runs[side].append(served)
            print(f"pair {pair + 1} previews {side}: {served.requests_per_s:.2f} req/s", flush=True)
    text = markdown(runs, (start_load, load_average()))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def markdown(runs: dict[str, list[throughput.Served]], load: tuple[float, float]) -> str:
    rows = []
    for i, (off, on) in enumerate(zip(runs["off"], runs["on"], strict=True)):
        ratio = on.served / off.served
        rows.append((i + 1, f"{off.requests_per_s:.2f}", f"{on.requests_per_s:.2f}", f"{ratio:.3f}"))
    images = {side: sum(s.completed for s in served) for side, served in runs.items()}
    seconds = {side: sum(s.window_s for s in served) for side, served in runs.items()}
    evals = {side: sum(s.client_evals for s in served) for side, served in runs.items()}
    rate = {side: images[side] / seconds[side] for side in runs}
    ratio = (evals["on"] / seconds["on"]) / (evals["off"] / seconds["off"])
    pairs = len(rows)
    return "\n\n".join(
        [
            "## Previews: served throughput with previews on vs off",
            f"{pairs} pairs, alternating off / on, each a fresh default server on the bundled model "
            f"(`{BUNDLED.name}`), 32 closed-loop clients, K uniform over {sorted(throughput.MIX)}, every "
            "request streamed; on: `preview_every=1` (raised by the server to K/20). Warm-up "
            f"{WARMUP_S:.0f} s, window {WINDOW_S:.0f} s each. Load average {load[0]:.2f} → "
            f"{load[1]:.2f}; nothing else ran.",
            report.table(["pair", "off (req/s)", "on (req/s)", "on / off (images·steps/s)"], rows),
            f"All pairs: off {rate['off']:.2f} req/s, on {rate['on']:.2f} req/s; served images·steps/s "
            f"on / off = **{ratio:.3f}**.",
            report.bar(f"previews on ≥ {BAR:.2f} × off", ratio >= BAR, f"**{ratio:.3f}**"),
        ]
    )


if __name__ == "__main__":
    main()
