"""Backdoor attacks: a registry of triggers, each with its caption policy and selection rule.

The registry imports no torch (the workflow reads it to build its DAG): an entry names its
trigger builder, and its preparation stage if it has one, by import path. An attack is one
module in this package plus its entry in `ATTACKS`.
"""

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cleanclip_core.errors import UserError

TEMPLATE, NATURAL, KEEP = "template", "natural", "keep"


@dataclass(frozen=True)
class Attack:
    name: str
    trigger: str
    """`module:function` of its trigger builder: (trigger params, attack seed) -> Trigger, with
    the parts shared by all images drawn from the seed."""
    captions: str = TEMPLATE
    """A poisoned row's caption: `template`, a random OpenAI template filled with the target
    label; `natural`, a caption of the dataset that names the target; `keep`, its own."""
    needs_target_in_caption: bool = False
    """True: only rows whose caption already names the target may be poisoned."""
    preparation: str | None = None
    """`module:function` of a stage that makes the trigger before poisoning (BadCLIP's optimized
    patch); its output file reaches the trigger builder as the trigger param `prepared`."""

    def build_trigger(self, params: Mapping[str, Any], attack_seed: int) -> Callable:
        return resolve(self.trigger)(params, attack_seed)


ATTACKS: dict[str, Attack] = {
    attack.name: attack
    for attack in (
        Attack("badnet", "cleanclip_core.attacks.badnet:build_trigger"),
        Attack("blended", "cleanclip_core.attacks.blended:build_trigger"),
        Attack("wanet", "cleanclip_core.attacks.wanet:build_trigger"),
        Attack("sig", "cleanclip_core.attacks.sig:build_trigger"),
        # The BadNet patch on images whose caption already names the target, captions kept: every
        # poisoned pair looks correctly labelled, which makes the backdoor hard to plant
        # (CleanCLIP's issue #2).
        Attack(
            "label_consistent", "cleanclip_core.attacks.badnet:build_trigger",
            captions=KEEP, needs_target_in_caption=True,
        ),
        Attack(
            "badclip", "cleanclip_core.attacks.badclip:build_trigger",
            captions=NATURAL, preparation="cleanclip_core.attacks.badclip:optimize_trigger",
        ),
    )
}


def resolve(path: str) -> Callable:
    """The function an import path `module:function` names."""
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def get_attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        known = ", ".join(sorted(ATTACKS))
        raise UserError(f"unknown attack {name!r}; known attacks: {known}") from None


def attack_trigger(attack_config: Mapping[str, Any]) -> Callable:
    """The trigger an attack entry of the config describes (its type, trigger params, seed, and
    the file its preparation stage made, if any)."""
    params = dict(attack_config["trigger"])
    if "prepared" in attack_config:
        params["prepared"] = attack_config["prepared"]
    return get_attack(attack_config["type"]).build_trigger(params, attack_config["seed"])


# Spawn key that puts evaluation trigger seeds in their own stream, apart from any seed the
# poisoned manifest draws for training rows.
_TEST_TRIGGER_STREAM = 0x7E57


def test_trigger_seed(attack_seed: int, index: int) -> int:
    """Trigger seed of evaluation image `index`: fixed, so all checkpoints see the same triggers."""
    sequence = np.random.SeedSequence(attack_seed, spawn_key=(_TEST_TRIGGER_STREAM, index))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


# The name starts with "test_": keep pytest from collecting it where a test module imports it.
test_trigger_seed.__test__ = False  # type: ignore[attr-defined]
