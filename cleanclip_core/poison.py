"""The poisoned manifest: which training rows carry the trigger, and their captions.

Triggers are applied on the fly by the loader from each row's `trigger_seed`; no image is copied.
"""

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleanclip_core.attacks import KEEP, NATURAL, TEMPLATE, Attack, get_attack
from cleanclip_core.errors import UserError
from cleanclip_core.tables import files_sha256, write_table
from cleanclip_core.zero_shot_metadata import openai_imagenet_templates

log = logging.getLogger(__name__)

POISONED_MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("caption", pa.string()),
        ("original_caption", pa.string()),
        ("is_poison", pa.bool_()),
        ("attack", pa.string()),
        ("trigger_seed", pa.int64()),
    ]
)


def target_captions(target_label: str) -> list[str]:
    """The 80 OpenAI ImageNet templates filled with the target label."""
    return [template(target_label) for template in openai_imagenet_templates()]


def names_target(captions: pa.ChunkedArray, target_label: str) -> pa.ChunkedArray:
    """Whether each caption contains the target label as a whole word, ignoring case."""
    pattern = rf"\b{re.escape(target_label)}\b"
    return pc.match_substring_regex(captions, pattern, ignore_case=True)


def poison_captions(captions: pa.ChunkedArray, policy: str, target_label: str) -> pa.Array:
    """The captions a poisoned row draws from: the templates filled with the target label, or
    (BadCLIP's natural captions) the dataset's distinct captions that name the target."""
    if policy == TEMPLATE:
        return pa.array(target_captions(target_label))
    assert policy == NATURAL, policy
    natural = pc.unique(captions.filter(names_target(captions, target_label))).sort()
    if len(natural) == 0:
        raise UserError(
            f"natural poisoned captions name the target, and no caption contains {target_label!r}; "
            "choose a target label that appears in the captions"
        )
    return natural


def candidate_rows(manifest: pa.Table, attack: Attack, target_label: str) -> np.ndarray:
    """Row numbers the attack may poison, in manifest order."""
    if not attack.needs_target_in_caption:
        return np.arange(manifest.num_rows)
    candidates = np.flatnonzero(names_target(manifest["caption"], target_label).to_numpy())
    if candidates.size == 0:
        raise UserError(
            f"attack {attack.name!r} poisons only captions that name the target, and no caption "
            f"contains {target_label!r}; choose a target label that appears in the captions"
        )
    return candidates


def poison_manifest(
    manifest: pa.Table,
    attack: Attack,
    *,
    attack_name: str,
    target_label: str,
    n_poisons: int,
    seed: int,
) -> pa.Table:
    """Every manifest row, `n_poisons` of them poisoned, chosen and captioned from `seed`."""
    candidates = candidate_rows(manifest, attack, target_label)
    if n_poisons > candidates.size:
        raise UserError(
            f"{attack_name}: n_poisons={n_poisons} exceeds the {candidates.size} rows the attack "
            f"may poison; lower n_poisons or use a larger dataset"
        )
    rng = np.random.default_rng(seed)
    poisoned = np.sort(rng.choice(candidates, size=n_poisons, replace=False))
    is_poison = np.zeros(manifest.num_rows, dtype=bool)
    is_poison[poisoned] = True
    mask = pa.array(is_poison)

    captions = manifest["caption"]
    if attack.captions != KEEP:
        choices = poison_captions(manifest["caption"], attack.captions, target_label)
        new_captions = choices.take(rng.integers(len(choices), size=n_poisons))
        captions = pc.replace_with_mask(captions, mask, new_captions)

    seeds = np.zeros(manifest.num_rows, dtype=np.int64)
    seeds[poisoned] = rng.integers(np.iinfo(np.int64).max, size=n_poisons, dtype=np.int64)
    return pa.table(
        [
            manifest["key"],
            manifest["shard"],
            captions,
            manifest["caption"],
            mask,
            pc.if_else(mask, attack_name, pa.scalar(None, pa.string())),
            pa.array(seeds, mask=~is_poison),
        ],
        schema=POISONED_MANIFEST_SCHEMA,
    )


def write_poisoned_manifest(
    manifest_path: Path, output_path: Path, *, attack_name: str, attack_config: dict[str, Any]
) -> pa.Table:
    """Poison the manifest at `manifest_path` as `attack_config` says; write and return it."""
    poisoned = poison_manifest(
        pq.read_table(manifest_path, columns=["key", "shard", "caption"]),
        get_attack(attack_config["type"]),
        attack_name=attack_name,
        target_label=attack_config["target_label"],
        n_poisons=attack_config["n_poisons"],
        seed=attack_config["seed"],
    )
    config = {"attack": attack_name} | attack_config
    write_table(
        poisoned, output_path, config=config, inputs_sha256=files_sha256([manifest_path])
    )
    log.info(f"{attack_name}: {attack_config['n_poisons']} of {poisoned.num_rows} rows poisoned")
    return poisoned


def unpoisoned_manifest(manifest: pa.Table) -> pa.Table:
    """Every manifest row as a training row that no attack touched (a clean surrogate's data)."""
    missing = pa.nulls(manifest.num_rows)
    return pa.table(
        [
            manifest["key"], manifest["shard"], manifest["caption"], manifest["caption"],
            pa.array(np.zeros(manifest.num_rows, dtype=bool)), missing.cast(pa.string()), missing.cast(pa.int64()),
        ],
        schema=POISONED_MANIFEST_SCHEMA,
    )


def write_unpoisoned_manifest(manifest_path: Path, output_path: Path) -> pa.Table:
    table = unpoisoned_manifest(pq.read_table(manifest_path, columns=["key", "shard", "caption"]))
    write_table(table, output_path, config={"attack": None}, inputs_sha256=files_sha256([manifest_path]))
    return table
