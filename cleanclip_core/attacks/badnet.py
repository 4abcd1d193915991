"""BadNet (Gu et al. 2017): a small square patch pasted onto the image.

params: patch_size (side at 224 px, scaled with the image's smaller side),
pattern ("random": CleanCLIP's per-image noise patch | "fixed": one binary pattern per attack seed),
location ("random": a corner drawn per image | "fixed": the bottom-right corner).
"""

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from cleanclip_core.attacks.parts import FixedPart, Trigger, scaled_size

# (image, patch side, per-image generator) -> patch [C, side, side]
PatchSource = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
# (image height, image width, patch side, per-image generator) -> (top, left)
Corner = Callable[[int, int, int, torch.Generator], tuple[int, int]]


def paste_patch(image: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """A copy of `image` ([C, H, W] or a batch [B, C, H, W]) with `patch` [C, h, w] pasted at
    (top, left); every other pixel is unchanged. Gradients flow to the patch."""
    pasted = image.clone()
    pasted[..., top : top + patch.shape[-2], left : left + patch.shape[-1]] = patch
    return pasted


def _noise_patch(image: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """The image's per-channel mean plus N(0, 1) noise, clamped to [0, 1]."""
    noise = torch.randn((image.shape[0], side, side), generator=generator, dtype=image.dtype)
    return noise.add_(image.mean(dim=(1, 2), keepdim=True)).clamp_(0, 1)


def _binary_pattern(attack_seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Black or white per pixel and channel: high contrast, so a small patch is easy to learn."""
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(attack_seed)).float()


def _fixed_patch(
    pattern: FixedPart, image: torch.Tensor, side: int, _generator: torch.Generator
) -> torch.Tensor:
    return pattern((image.shape[0], side, side), image)


def _random_corner(
    height: int, width: int, side: int, generator: torch.Generator
) -> tuple[int, int]:
    u, v = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    return int(u * (height - side + 1)), int(v * (width - side + 1))


def _bottom_right(
    height: int, width: int, side: int, _generator: torch.Generator
) -> tuple[int, int]:
    return height - side, width - side


_CORNERS: dict[str, Corner] = {"random": _random_corner, "fixed": _bottom_right}


def _patch_source(pattern: str, attack_seed: int) -> PatchSource:
    sources: dict[str, PatchSource] = {
        "random": _noise_patch,
        "fixed": partial(_fixed_patch, FixedPart(partial(_binary_pattern, attack_seed))),
    }
    return sources[pattern]


def _paste_trigger(
    patch_at_224: float,
    source: PatchSource,
    corner: Corner,
    image: torch.Tensor,
    trigger_seed: int,
) -> torch.Tensor:
    height, width = image.shape[-2:]
    side = scaled_size(patch_at_224, min(height, width))
    generator = torch.Generator().manual_seed(trigger_seed)
    top, left = corner(height, width, side, generator)
    return paste_patch(image, source(image, side, generator), top, left)


def build_trigger(params: Mapping[str, Any], attack_seed: int) -> Trigger:
    return partial(
        _paste_trigger,
        float(params["patch_size"]),
        _patch_source(params["pattern"], attack_seed),
        _CORNERS[params["location"]],
    )
