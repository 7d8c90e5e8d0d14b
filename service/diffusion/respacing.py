"""Which of the T training steps a K-step sampler visits (paper section 4, "Improving sampling speed").

Two spellings, as in improved-diffusion: section counts ("50" or "10,15,20": the T steps are cut into
equal sections and each keeps that many evenly strided steps) and "ddimN" (the smallest integer stride
giving exactly N steps, starting at 0, as in the DDIM paper).
"""

from __future__ import annotations


class RespacingError(ValueError):
    """A respacing string that cannot be applied to a process of T steps."""


def section_steps(num_timesteps: int, section_counts: list[int]) -> list[int]:
    """Evenly strided steps per section.

    The stride is accumulated by repeated float addition and rounded half-to-even (Python's round),
    exactly as the reference does: "25" at T=1000/4000 differs from half-up rounding of i*d.
    """
    if not section_counts:
        raise RespacingError("respacing needs at least one section count")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    steps: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count < 0 or size < count:
            raise RespacingError(
                f"cannot take {count} steps from a section of {size} steps (T={num_timesteps})"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


def ddim_steps(num_timesteps: int, count: int) -> list[int]:
    """range(0, T, s) for the smallest integer stride s that yields exactly `count` steps."""
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise RespacingError(f"cannot take exactly {count} steps from T={num_timesteps} with an integer stride")


def respaced_timesteps(num_timesteps: int, respacing: str | int | None) -> list[int]:
    """Sorted kept timesteps (the `timestep_map`). None, "" or T keeps every step."""
    if respacing is None or respacing == "":
        return list(range(num_timesteps))
    if isinstance(respacing, int):
        return section_steps(num_timesteps, [respacing])
    text = respacing.strip()
    try:
        if text.startswith("ddim"):
            return ddim_steps(num_timesteps, int(text[4:]))
        return section_steps(num_timesteps, [int(c) for c in text.split(",")])
    except ValueError as e:
        if isinstance(e, RespacingError):
            raise
        raise RespacingError(f"respacing {respacing!r} is not 'N', 'a,b,c' or 'ddimN'") from None
