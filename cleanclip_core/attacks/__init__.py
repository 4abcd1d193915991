"""Backdoor attacks: a registry of triggers, each with its caption policy and selection rule.

The registry imports no torch (the workflow reads it to build its DAG): an entry names its
trigger builder, and its preparation stage if it has one, by import path, and gives the JSON
schema of its trigger parameters. An attack is one module (here or in a plugin, see
cleanclip_core.registry) plus its entry in `ATTACKS`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cleanclip_core.registry import Registry, resolve

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
    trigger_schema: Mapping[str, Any] | None = None
    """JSON schema of the config's `trigger` parameters, defaults included (a `$ref` into the
    config schema's `$defs` for the built-in attacks); None: parameters are not checked."""

    def build_trigger(self, params: Mapping[str, Any], attack_seed: int) -> Callable:
        return resolve(self.trigger)(params, attack_seed)


def _defined(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


ATTACKS = Registry("attack", Attack, (
    Attack("badnet", "cleanclip_core.attacks.badnet:build_trigger", trigger_schema=_defined("badnet_trigger")),
    Attack("blended", "cleanclip_core.attacks.blended:build_trigger", trigger_schema=_defined("blended_trigger")),
    Attack("wanet", "cleanclip_core.attacks.wanet:build_trigger", trigger_schema=_defined("wanet_trigger")),
    Attack("sig", "cleanclip_core.attacks.sig:build_trigger", trigger_schema=_defined("sig_trigger")),
    # The BadNet patch on images whose caption already names the target, captions kept: every
    # poisoned pair looks correctly labelled, which makes the backdoor hard to plant
    # (CleanCLIP's issue #2).
    Attack(
        "label_consistent", "cleanclip_core.attacks.badnet:build_trigger",
        captions=KEEP, needs_target_in_caption=True, trigger_schema=_defined("badnet_trigger"),
    ),
    Attack(
        "badclip", "cleanclip_core.attacks.badclip:build_trigger",
        captions=NATURAL, preparation="cleanclip_core.attacks.badclip:optimize_trigger",
        trigger_schema=_defined("badclip_trigger"),
    ),
), paths=("trigger", "preparation"))


def get_attack(name: str) -> Attack:
    return ATTACKS.entry(name)


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
