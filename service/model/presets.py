"""Named presets: every released improved/guided-diffusion checkpoint plus two small models of our own.

presets.json stores the reference factories' *flags* (as the READMEs give them, defaults filled in);
this module applies the factories' rules to turn them into a UNetConfig and a DiffusionConfig:
channel multipliers chosen by image size, attention resolutions converted to downsample factors,
NUM_CLASSES hard-coded to 1000, 6 output channels with learn_sigma, 6 input channels for super-res.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from service.diffusion.config import DiffusionConfig
from service.model.config import ConfigError, UNetConfig

# Both reference script_utils hard-code the class count, whatever the dataset.
REFERENCE_NUM_CLASSES = 1000
CLASSIFIER_OUTPUTS = 1000
CLASSIFIER_HEAD_CHANNELS = 64  # create_classifier fixes the head width

Mult = tuple[float, ...]
IMPROVED_MULT: dict[int, Mult] = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
IMPROVED_SR_MULT: dict[int, Mult] = {64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
GUIDED_MULT: dict[int, Mult] = {
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}
GUIDED_SR_MULT: dict[int, Mult] = {64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4), 512: (1, 1, 2, 2, 4, 4)}
REFERENCE_REPOS = ("improved-diffusion", "guided-diffusion")


@dataclass(frozen=True)
class Preset:
    name: str
    repo: str
    checkpoint: str | None
    url: str | None
    unet: UNetConfig
    diffusion: DiffusionConfig | None
    title: str = ""
    use_fp16: bool = False  # the reference samples this model with an fp16 torso


class UnknownPresetError(KeyError):
    def __init__(self, name: str, valid: list[str]) -> None:
        super().__init__(name)
        self.message = f"unknown preset {name!r}; valid presets: {', '.join(valid)}"

    def __str__(self) -> str:
        return self.message


def channel_mult(table: dict[int, Mult], size: int, flag: str = "") -> Mult:
    """An explicit "1,2" flag wins (guided only); otherwise the factory's table by image size."""
    if flag:
        return tuple(float(m) for m in flag.split(","))
    if size not in table:
        raise ConfigError(f"the reference factory has no channel_mult for size {size} ({sorted(table)})")
    return table[size]


def attention_factors(image_size: int, resolutions: str) -> tuple[int, ...]:
    """Resolutions in pixels ("16,8") -> downsample factors image_size // res, as the factories pass them."""
    return tuple(image_size // int(r) for r in resolutions.split(",") if r)


def unet_from_flags(repo: str, kind: str, f: dict[str, Any]) -> UNetConfig:
    """create_model / sr_create_model flags of either repo -> UNetConfig."""
    guided = repo == "guided-diffusion"
    if kind == "superres":
        size = int(f["large_size"])
        mult = channel_mult(GUIDED_SR_MULT if guided else IMPROVED_SR_MULT, size)
    else:
        size = int(f["image_size"])
        if guided:
            mult = channel_mult(GUIDED_MULT, size, f.get("channel_mult", ""))
        else:
            mult = channel_mult(IMPROVED_MULT, size)
    return UNetConfig(
        kind="superres" if kind == "superres" else "unet",
        image_size=size,
        # SuperResModel doubles in_channels: the resized low_res image is concatenated after x.
        in_channels=6 if kind == "superres" else 3,
        model_channels=int(f["num_channels"]),
        out_channels=6 if f["learn_sigma"] else 3,
        num_res_blocks=int(f["num_res_blocks"]),
        attention_resolutions=attention_factors(size, f["attention_resolutions"]),
        channel_mult=mult,
        num_classes=REFERENCE_NUM_CLASSES if f["class_cond"] else None,
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f.get("num_head_channels", -1)),
        num_heads_upsample=int(f["num_heads_upsample"]),
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f.get("resblock_updown", False)),
        # guided's sr_create_model never passes the flag, so upsamplers keep the legacy order.
        use_new_attention_order=bool(f.get("use_new_attention_order", False)),
        dropout=float(f["dropout"]),
    )


def classifier_from_flags(f: dict[str, Any]) -> UNetConfig:
    """guided-diffusion create_classifier flags -> UNetConfig (trunk in legacy attention order)."""
    size = int(f["image_size"])
    return UNetConfig(
        kind="classifier",
        image_size=size,
        in_channels=3,
        model_channels=int(f["classifier_width"]),
        out_channels=CLASSIFIER_OUTPUTS,
        num_res_blocks=int(f["classifier_depth"]),
        attention_resolutions=attention_factors(size, f["classifier_attention_resolutions"]),
        channel_mult=channel_mult(GUIDED_MULT, size),
        num_heads=1,
        num_head_channels=CLASSIFIER_HEAD_CHANNELS,
        use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
        resblock_updown=bool(f["classifier_resblock_updown"]),
        pool=str(f["classifier_pool"]),
    )


def preset_from_entry(name: str, e: dict[str, Any]) -> Preset:
    repo, kind = e["repo"], e["kind"]
    if repo in REFERENCE_REPOS:
        flags = e["model_flags"]
        if kind == "classifier":
            unet, diffusion, fp16 = classifier_from_flags(flags), None, flags["classifier_use_fp16"]
        else:
            unet = unet_from_flags(repo, kind, flags)
            diffusion = DiffusionConfig.from_reference_flags(e["diffusion_flags"])
            fp16 = flags.get("use_fp16", False)
    else:
        unet = UNetConfig.from_dict(e["architecture"])
        diffusion = DiffusionConfig.from_dict(e["diffusion"]) if e.get("diffusion") else None
        fp16 = False
    return Preset(
        name=name,
        repo=repo,
        checkpoint=e.get("checkpoint"),
        url=e.get("url"),
        unet=unet,
        diffusion=diffusion,
        title=e.get("title", ""),
        use_fp16=bool(fp16),
    )


def load_presets() -> dict[str, Preset]:
    text = resources.files("service.model").joinpath("presets.json").read_text(encoding="utf-8")
    entries: dict[str, dict[str, Any]] = json.loads(text)["presets"]
    return {name: preset_from_entry(name, e) for name, e in entries.items()}


PRESETS: dict[str, Preset] = load_presets()


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(name, sorted(PRESETS)) from None
