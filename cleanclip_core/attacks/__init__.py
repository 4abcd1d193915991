"""Backdoor attacks: a registry of triggers, each with its caption policy and selection rule.

An attack is one module in this package that calls `register(Attack(...))`; it becomes known
by adding its import at the bottom of this file.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cleanclip_core.errors import UserError

Trigger = Callable[[torch.Tensor, int], torch.Tensor]
"""(image [C, H, W] in [0, 1], trigger_seed) -> a new triggered image, same shape and dtype."""


@dataclass(frozen=True)
class Attack:
    name: str
    build_trigger: Callable[[Mapping[str, Any], int], Trigger]
    """(trigger params, attack seed) -> Trigger; parts shared by all images come from the seed."""
    replaces_caption: bool
    """True: a poisoned row gets a random template filled with the target label."""
    needs_target_in_caption: bool
    """True: only rows whose caption already names the target may be poisoned."""


ATTACKS: dict[str, Attack] = {}


def register(attack: Attack) -> None:
    if attack.name in ATTACKS:
        raise ValueError(f"attack {attack.name!r} is registered twice")
    ATTACKS[attack.name] = attack


def get_attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        known = ", ".join(sorted(ATTACKS))
        raise UserError(f"unknown attack {name!r}; known attacks: {known}") from None


def attack_trigger(attack_config: Mapping[str, Any]) -> Trigger:
    """The trigger an attack entry of the config describes (its type, trigger params, seed)."""
    attack = get_attack(attack_config["type"])
    return attack.build_trigger(attack_config["trigger"], attack_config["seed"])


# Spawn key that puts evaluation trigger seeds in their own stream, apart from any seed the
# poisoned manifest draws for training rows.
_TEST_TRIGGER_STREAM = 0x7E57


def test_trigger_seed(attack_seed: int, index: int) -> int:
    """Trigger seed of evaluation image `index`: fixed, so all checkpoints see the same triggers."""
    sequence = np.random.SeedSequence(attack_seed, spawn_key=(_TEST_TRIGGER_STREAM, index))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


# The name starts with "test_": keep pytest from collecting it where a test module imports it.
test_trigger_seed.__test__ = False  # type: ignore[attr-defined]


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


from cleanclip_core.attacks import badnet, blended, label_consistent, sig, wanet  # noqa: E402, F401
