"""Blended (Chen et al. 2017): a fixed noise image mixed into the whole image.

params: alpha, the weight of the noise. CleanCLIP redraws the noise on every call; here it is one
U[0, 1] image per attack seed (BackdoorBench's fixed-pattern form), so the trigger is learnable
and reproducible.
"""

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from cleanclip_core.attacks.parts import FixedPart, Trigger


def blend(image: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * image + alpha * pattern, clamped to [0, 1]."""
    return torch.lerp(image, pattern, alpha).clamp_(0, 1)


def _uniform_noise(attack_seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(attack_seed))


def _blend_trigger(
    noise: FixedPart, alpha: float, image: torch.Tensor, _trigger_seed: int
) -> torch.Tensor:
    return blend(image, noise(image.shape, image), alpha)


def build_trigger(params: Mapping[str, Any], attack_seed: int) -> Trigger:
    return partial(
        _blend_trigger, FixedPart(partial(_uniform_noise, attack_seed)), float(params["alpha"])
    )
