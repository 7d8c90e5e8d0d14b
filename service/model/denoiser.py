"""The one place where a checkpoint's output layout meets the diffusion math.

improved/guided-diffusion networks with learned sigma return 2C channels: eps in [0:C] and the raw
variance interpolation value in [C:2C]. Everything downstream receives (eps, v) and never slices.
"""

from __future__ import annotations

import torch
from torch import nn


class EpsVDenoiser:
    """Adapts `net(x, t, y)` to the `Denoiser` protocol of service.diffusion.sampling."""

    def __init__(self, net: nn.Module, learn_sigma: bool, class_conditional: bool) -> None:
        self.net = net
        self.learn_sigma = learn_sigma
        self.class_conditional = class_conditional

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The diffusion math runs in float32 whatever the network's precision (fp16/bf16 torso or
        # autocast): the reference keeps the variance interpolation and x0 prediction in float32.
        out = self.net(x_t, model_t, y if self.class_conditional else None).float()
        if not self.learn_sigma:
            return out, None
        channels = x_t.shape[1]
        return out[:, :channels], out[:, channels:]
