"""SIG (Barni et al. 2019): a horizontal sinusoid over the whole image.

params: amplitude, cycles (periods across the width), mode, alpha.
The signal is amplitude * sin(2 pi * cycles * j / W) for column j, the same on every row and
channel. mode "add" (the original SIG): clamp(image + signal, 0, 1).
mode "blend" (CleanCLIP's variant): clamp((1 - alpha) * image + alpha * signal, 0, 1), the
signed signal mixed in as an image, which also darkens the image by (1 - alpha).
"""

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from cleanclip_core.attacks.parts import FixedPart, Trigger

# mode -> (params -> (image weight, signal weight))
_WEIGHTS: dict[str, Callable[[Mapping[str, Any]], tuple[float, float]]] = {
    "add": lambda params: (1.0, 1.0),
    "blend": lambda params: (1.0 - float(params["alpha"]), float(params["alpha"])),
}


def sinusoid(amplitude: float, cycles: float, width: int) -> torch.Tensor:
    """amplitude * sin(2 pi * cycles * j / width) for j in [0, width), shape [1, 1, width]."""
    columns = torch.arange(width, dtype=torch.float64)
    return (amplitude * torch.sin(2 * math.pi * cycles * columns / width)).float().view(1, 1, width)


def _signal(amplitude: float, cycles: float, shape: tuple[int, ...]) -> torch.Tensor:
    return sinusoid(amplitude, cycles, shape[-1])


def _sig_trigger(
    signal: FixedPart,
    image_weight: float,
    signal_weight: float,
    image: torch.Tensor,
    _trigger_seed: int,
) -> torch.Tensor:
    wave = signal((1, 1, image.shape[-1]), image)
    return (image * image_weight).add_(wave, alpha=signal_weight).clamp_(0, 1)


def build_trigger(params: Mapping[str, Any], attack_seed: int) -> Trigger:
    signal = FixedPart(partial(_signal, float(params["amplitude"]), float(params["cycles"])))
    return partial(_sig_trigger, signal, *_WEIGHTS[params["mode"]](params))
