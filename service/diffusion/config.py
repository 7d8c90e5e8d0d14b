"""Diffusion settings of a model (the `diffusion` block of model.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class NoiseSchedule(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"


class LossType(StrEnum):
    """improved-diffusion's loss types. RESCALED_MSE is the paper's L_hybrid (lambda = 0.001)."""

    MSE = "mse"
    RESCALED_MSE = "rescaled_mse"
    KL = "kl"
    RESCALED_KL = "rescaled_kl"


class VarianceType(StrEnum):
    """How Sigma_theta(x_t, t) is obtained (paper section 3.1)."""

    LEARNED_RANGE = "learned_range"
    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"
    # Analytic-DPM (service.diffusion.analytic): needs the model's Gamma table (`ddpm gamma`).
    ANALYTIC = "analytic"


class DiffusionConfigError(ValueError):
    """Diffusion settings that cannot describe a valid process."""


@dataclass(frozen=True)
class DiffusionConfig:
    noise_schedule: NoiseSchedule
    num_timesteps: int
    learn_sigma: bool
    rescale_timesteps: bool
    loss_type: LossType
    sigma_small: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "noise_schedule", NoiseSchedule(self.noise_schedule))
            object.__setattr__(self, "loss_type", LossType(self.loss_type))
        except ValueError as e:
            raise DiffusionConfigError(f"diffusion: {e}") from None
        if self.num_timesteps < 1:
            raise DiffusionConfigError(f"diffusion.num_timesteps must be >= 1, got {self.num_timesteps}")

    @property
    def variance_type(self) -> VarianceType:
        if self.learn_sigma:
            return VarianceType.LEARNED_RANGE
        return VarianceType.FIXED_SMALL if self.sigma_small else VarianceType.FIXED_LARGE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["noise_schedule"] = str(self.noise_schedule)
        d["loss_type"] = str(self.loss_type)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise DiffusionConfigError(f"diffusion has unknown field(s): {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise DiffusionConfigError(f"diffusion settings are incomplete: {e}") from None

    @classmethod
    def from_reference_flags(cls, flags: dict[str, Any]) -> DiffusionConfig:
        """Map improved/guided-diffusion `create_gaussian_diffusion` flags (as in the manifests)."""
        if flags.get("predict_xstart"):
            raise DiffusionConfigError(
                "predict_xstart models are not supported (no released checkpoint uses it)"
            )
        if flags.get("use_kl"):
            loss = LossType.RESCALED_KL
        elif flags.get("rescale_learned_sigmas"):
            loss = LossType.RESCALED_MSE
        else:
            loss = LossType.MSE
        return cls(
            noise_schedule=NoiseSchedule(flags["noise_schedule"]),
            num_timesteps=int(flags["diffusion_steps"]),
            learn_sigma=bool(flags["learn_sigma"]),
            rescale_timesteps=bool(flags["rescale_timesteps"]),
            loss_type=loss,
            sigma_small=bool(flags.get("sigma_small", False)),
        )
