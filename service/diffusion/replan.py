"""Re-planning a running row onto a coarser schedule from the step it is at (load-adaptive budgets).

A row on the schedule tau_0 < ... < tau_{K-1}, about to take respaced step k, holds x at t = tau_k and has
already evaluated the network at tau_{K-1} .. tau_{k+1}. Re-planning keeps all of that and the current t,
and replaces the steps below t with the steps of the sampler's own K'-step schedule that lie below it:

    combined = {tau_j : j >= k}  U  {tau'_i : tau'_i < tau_k}

Why this is exact for the past: the combined process (process.process_at) gives step j the beta
1 - alpha_bar[tau_j] / alpha_bar[next kept step below tau_j], and for every j > k both steps are unchanged,
so every coefficient the row has used (the posterior, the learned-range bounds, DDIM's alpha_bar_prev,
DPM-Solver++'s lambda differences, which look one step up and one step down) is the combined process's
too. Only the step at tau_k changes: its target is now the first coarse step below it. For ancestral
DDPM that is the respacing of the remaining interval with its coefficients recomputed; for DDIM and
DPM-Solver++ it is a shorter timestep list from the current t. So a re-planned row's trajectory equals a
fresh run on the combined schedule with the same noise stream (one draw per step either way), which is
what makes it reproducible given the re-plan point.

At least one coarse step is kept below the current one (`MIN_REMAINING` steps in all): jumping from a
noisy t straight to x_0 is what the floor exists to prevent, and Analytic-DPM's clip of the last noisy
step (service.diffusion.analytic) would otherwise fall on a step the row has already taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MIN_REMAINING = 2  # the current step and at least one below it


def combined_timesteps(kept: Sequence[int], cursor: int, coarse: Sequence[int]) -> list[int]:
    """The schedule of a row at respaced step `cursor` of `kept` (ascending training steps) re-planned
    onto `coarse` (the K'-step schedule's steps, any order): ascending, as process_at takes it."""
    current = kept[cursor]
    return sorted({*kept[cursor:], *(t for t in coarse if t < current)})


def remaining_steps(current: int, coarse: Sequence[int]) -> int:
    """Steps left after re-planning at training step `current` onto `coarse`: the current one and the
    coarse steps below it."""
    return 1 + sum(1 for t in coarse if t < current)


def coarsest_fitting(
    schedule: Callable[[int], Sequence[int]], current: int, floor: int, largest: int, budget: int
) -> int | None:
    """The largest K' in [floor, largest] whose re-plan at `current` takes at most `budget` steps (and at
    least MIN_REMAINING); None when even the floor takes more, or the row is too near its end.
    `schedule(K')` gives the K'-step schedule's training steps; the remaining count grows with K' (up to
    rounding), so this bisects."""
    if floor > largest:
        return None

    def fits(k: int) -> bool:
        return remaining_steps(current, schedule(k)) <= budget

    if not fits(floor):
        return None
    low, high = floor, largest  # fits(low) holds; find the largest such K
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    if remaining_steps(current, schedule(low)) < MIN_REMAINING:
        return None  # the row is at the schedule's last steps already: nothing left to shorten
    return low
