"""What trigger functions share: their type, sizes given at 224 px, parts fixed per shape."""

from collections.abc import Callable
from typing import Any

import torch

Trigger = Callable[[torch.Tensor, int], torch.Tensor]
"""(image [C, H, W] in [0, 1], trigger_seed) -> a new triggered image, same shape and dtype."""


def scaled_size(size_at_224: float, image_size: int) -> int:
    """A length given at 224 px scaled to `image_size` px, rounded half up, in [1, image_size]."""
    return min(image_size, max(1, int(size_at_224 * image_size / 224 + 0.5)))


class FixedPart:
    """A trigger part that depends only on its shape (and the attack's seed), made once per shape.

    `make(shape)` must be deterministic: a seeded part seeds its own generator, so the part for a
    shape does not depend on the order in which shapes arrive. Made from module-level functions,
    a FixedPart (and a trigger holding one) pickles, so data-loader workers can receive it.
    """

    def __init__(self, make: Callable[[tuple[int, ...]], torch.Tensor]) -> None:
        self._make = make
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def __call__(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The part of `shape`, in the dtype and on the device of `like`."""
        key = (tuple(shape), like.dtype, like.device)
        part = self._cache.get(key)
        if part is None:
            part = self._cache[key] = self._make(tuple(shape)).to(like)
        return part
