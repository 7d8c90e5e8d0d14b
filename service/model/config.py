"""Architecture of a UNet, as one typed, validated record (the `architecture` block of model.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

UNetKind = Literal["unet", "superres", "classifier"]


class ConfigError(ValueError):
    """A manifest or preset describes an architecture that cannot be built."""


DEFAULT_NORM_GROUPS = 32


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments shared by improved-diffusion and guided-diffusion UNets.

    `attention_resolutions` are downsample factors (image_size // resolution), as the reference
    constructors receive them. improved-diffusion checkpoints use the defaults of the guided-only
    fields (num_head_channels=-1, resblock_updown=False, legacy attention order).
    """

    kind: UNetKind
    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dropout: float = 0.0
    conv_resample: bool = True
    pool: str = "attention"
    # Groups of every GroupNorm. 32 in every released model (where 128+ channels make 4+ channels a
    # group); fewer groups give a narrow model's norms several channels each (docs/quality.md).
    norm_groups: int = DEFAULT_NORM_GROUPS
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(int(a) for a in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(float(m) for m in self.channel_mult))
        if self.kind not in ("unet", "superres", "classifier"):
            raise ConfigError(f"architecture.kind must be unet, superres or classifier, not {self.kind!r}")
        for name in ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"architecture.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.channel_mult:
            raise ConfigError("architecture.channel_mult must list at least one level")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"architecture.num_classes must be >= 1 or null, got {self.num_classes}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ConfigError("architecture.num_heads must be >= 1 when num_head_channels is -1")
        widths = sorted({int(m * self.model_channels) for m in self.channel_mult})
        if self.norm_groups < 1 or any(width % self.norm_groups for width in widths):
            raise ConfigError(
                f"architecture.norm_groups must divide every level's channels {widths}, "
                f"got {self.norm_groups}"
            )

    @property
    def heads_upsample(self) -> int:
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        if self.norm_groups == DEFAULT_NORM_GROUPS:
            d.pop("norm_groups")  # manifests of every released model stay as they were
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = [int(m) if float(m).is_integer() else m for m in self.channel_mult]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = set(cls.__dataclass_fields__) - {"extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"architecture has unknown field(s): {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"architecture is incomplete: {e}") from None
