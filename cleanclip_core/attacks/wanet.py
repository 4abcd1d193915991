"""WaNet (Nguyen and Tran 2021): a small, smooth, fixed warp of the whole image.

params: k (side of the random control grid), s (warp strength). A k x k field of U[-1, 1]
displacements, drawn from the attack seed and normalised to mean magnitude 1, is upsampled
bicubically to the image and added, times s / size, to the identity sampling grid.
"""

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from cleanclip_core.attacks.parts import FixedPart, Trigger


def warp_grid(k: int, s: float, attack_seed: int, height: int, width: int) -> torch.Tensor:
    """The sampling grid [1, H, W, 2] (x, y in [-1, 1]) for `grid_sample(align_corners=True)`.

    The field is divided by the width for x and the height for y: for square images this is
    WaNet's s / H, and it keeps the warp equally strong along both axes otherwise.
    """
    generator = torch.Generator().manual_seed(attack_seed)
    control = torch.rand((1, 2, k, k), generator=generator) * 2 - 1
    control = control / control.abs().mean()
    field = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    rows, columns = torch.meshgrid(
        torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij"
    )
    identity = torch.stack((columns, rows), dim=-1)[None]
    scale = s / torch.tensor([width, height], dtype=torch.float32)
    return (identity + field.permute(0, 2, 3, 1) * scale).clamp_(-1, 1)


def _grid(k: int, s: float, attack_seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return warp_grid(k, s, attack_seed, *shape)


def _warp_trigger(grid: FixedPart, image: torch.Tensor, _trigger_seed: int) -> torch.Tensor:
    sampling = grid(image.shape[-2:], image)
    return F.grid_sample(image[None], sampling, align_corners=True)[0].clamp_(0, 1)


def build_trigger(params: Mapping[str, Any], attack_seed: int) -> Trigger:
    return partial(
        _warp_trigger, FixedPart(partial(_grid, int(params["k"]), float(params["s"]), attack_seed))
    )
