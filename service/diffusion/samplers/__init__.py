"""The sampler registry: every reverse-step method the service offers, by name.

Adding a sampler is one module with a `SAMPLER` (see base.py for the signature and the per-row state it
may declare) and one line below. The API's `sampler` enum, the CLI's choices, the Triton protocol, the
engine's mixed batches, calibration and metric labels all read this registry.
"""

from __future__ import annotations

from service.diffusion.samplers import ddim, ddpm, dpm_solver
from service.diffusion.samplers.base import RowOptions, RowState, Sampler, StepOutput

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        ddpm.SAMPLER,
        ddim.SAMPLER,
        dpm_solver.SAMPLER,
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DEFAULT_SAMPLER = "ddpm"  # the paper's method: respaced ancestral sampling with the learned variance


class UnknownSampler(ValueError):
    """A sampler name that is not in the registry; the message lists the ones that are."""


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[str(name)]
    except KeyError:
        raise UnknownSampler(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {name!r}") from None


__all__ = [
    "DEFAULT_SAMPLER",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "RowOptions",
    "RowState",
    "Sampler",
    "StepOutput",
    "UnknownSampler",
    "get_sampler",
]
